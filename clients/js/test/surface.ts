// hubbub.d.ts against hubbub.js itself: the names the module exports, and the public
// members of each exported class, must be the same in the hand-written declarations
// and in the declarations tsc infers from the JavaScript (tsconfig.infer.json writes
// them to .inferred/). Only names are compared here; their types are held by
// test/usage.ts and by the browser tests that run the module.
import type * as Declared from "@hubbub/client";
import type * as Inferred from "../.inferred/hubbub.js";

type Public<T> = Exclude<keyof T, `_${string}` | `#${string}`>;
// The names on one side only; a failing line shows them ("Type '"presence"' does not
// satisfy the constraint 'never'").
type Difference<A, B> = Exclude<A, B> | Exclude<B, A>;
type None<Names extends never> = Names;

type ValueExports = None<Difference<keyof typeof Declared, keyof typeof Inferred>>;
type ClientMembers = None<Difference<Public<Declared.HubbubClient>, Public<Inferred.HubbubClient>>>;
type SubscriptionMembers = None<
  Difference<Public<Declared.Subscription>, Public<Inferred.Subscription>>
>;
type ErrorMembers = None<Difference<Public<Declared.HubbubError>, Public<Inferred.HubbubError>>>;
type ListenerMembers = None<
  Difference<Public<Declared.Listener>, Public<ReturnType<typeof Inferred.listen>>>
>;

export type { ClientMembers, ErrorMembers, ListenerMembers, SubscriptionMembers, ValueExports };
