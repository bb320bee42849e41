// A backend in Go talking to hubbub with the standard library only: it mints
// connection tokens (HS256, crypto/hmac) and publishes over hubbub's HTTP API
// (net/http).
//
//	HUBBUB_JWT_SECRET=... go run . token -ttl 1h -channel news alice
//	HUBBUB_URL=https://hub.example.com HUBBUB_API_KEY=... go run . publish news '{"text":"hi"}'
//
// `token` prints a token for the browser (new WebSocket(url, ["hubbub.v1.json", "bearer." + token]));
// `publish` prints hubbub's answer ({"offset", "epoch"} for a channel with history, {} otherwise).
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Claims of a connection token: `sub` names the user; `exp` is required by
// hubbub and must be a number; `channels` are subscribed by the server on connect.
type Claims struct {
	Sub      string   `json:"sub"`
	Iat      int64    `json:"iat"`
	Exp      int64    `json:"exp"`
	Name     string   `json:"name,omitempty"`
	Channels []string `json:"channels,omitempty"`
	// Extra holds claims of your own, e.g. "rooms": ["chat:lobby"] for a namespace
	// whose access is { claim = "rooms" } in hubbub.toml.
	Extra map[string]json.RawMessage `json:"-"`
}

// MintToken signs claims with HS256, as hubbub's --jwt-secret (HUBBUB_JWT_SECRET) expects.
func MintToken(secret []byte, claims Claims) (string, error) {
	header, err := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	if err != nil {
		return "", err
	}
	fields := map[string]json.RawMessage{}
	for name, value := range claims.Extra {
		fields[name] = value
	}
	standard, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(standard, &fields); err != nil { // sub, iat, exp... win
		return "", err
	}
	payload, err := json.Marshal(fields)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil)), nil
}

// Publish posts data to channel through hubbub's HTTP API: every subscriber,
// on every node, gets it. Errors are hubbub's {code, reason} with the status.
func Publish(client *http.Client, url, apiKey, channel string, data json.RawMessage) (json.RawMessage, error) {
	body, err := json.Marshal(map[string]any{"channel": channel, "data": data})
	if err != nil {
		return nil, err
	}
	request, err := http.NewRequest(http.MethodPost, strings.TrimSuffix(url, "/")+"/api/publish", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	request.Header.Set("Authorization", "apikey "+apiKey)
	request.Header.Set("Content-Type", "application/json")
	response, err := client.Do(request)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(response.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if response.StatusCode != http.StatusOK {
		var problem struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(answer, &problem) != nil {
			problem.Reason = string(answer) // not hubbub speaking: a proxy's error page
		}
		return nil, fmt.Errorf("hubbub answered %d: %s", response.StatusCode, problem.Reason)
	}
	return answer, nil
}

type channelList []string

func (c *channelList) String() string     { return strings.Join(*c, ",") }
func (c *channelList) Set(v string) error { *c = append(*c, v); return nil }

func need(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Fprintf(os.Stderr, "error: set %s\n", name)
		os.Exit(2)
	}
	return value
}

var usage = errors.New(
	"usage: token [-ttl D] [-channel C] [-name N] [-claim KEY=JSON] USER | publish CHANNEL JSON")

func run(args []string) error {
	if len(args) == 0 {
		return usage
	}
	switch args[0] {
	case "token":
		flags := flag.NewFlagSet("token", flag.ContinueOnError)
		ttl := flags.Duration("ttl", time.Hour, "how long the token is valid")
		name := flags.String("name", "", "display name")
		var channels, claims channelList
		flags.Var(&channels, "channel", "a channel the server subscribes on connect (repeatable)")
		flags.Var(&claims, "claim", "KEY=JSON: a claim of your own (repeatable)")
		if err := flags.Parse(args[1:]); err != nil || flags.NArg() != 1 || *ttl <= 0 {
			return usage
		}
		extra := map[string]json.RawMessage{}
		for _, claim := range claims {
			key, value, found := strings.Cut(claim, "=")
			if !found || key == "" || !json.Valid([]byte(value)) {
				return fmt.Errorf("%w (-claim %s: expected KEY=JSON)", usage, claim)
			}
			extra[key] = json.RawMessage(value)
		}
		now := time.Now().Unix()
		token, err := MintToken([]byte(need("HUBBUB_JWT_SECRET")), Claims{
			Sub: flags.Arg(0), Iat: now, Exp: now + int64(ttl.Seconds()), Name: *name, Channels: channels,
			Extra: extra,
		})
		if err != nil {
			return err
		}
		fmt.Println(token)
	case "publish":
		if len(args) != 3 {
			return usage
		}
		if !json.Valid([]byte(args[2])) {
			return fmt.Errorf("%w (the data is not JSON)", usage)
		}
		url := os.Getenv("HUBBUB_URL")
		if url == "" {
			url = "http://127.0.0.1:8000"
		}
		client := &http.Client{Timeout: 10 * time.Second}
		answer, err := Publish(client, url, need("HUBBUB_API_KEY"), args[1], json.RawMessage(args[2]))
		if err != nil {
			return err
		}
		fmt.Println(string(answer))
	default:
		return usage
	}
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		if errors.Is(err, usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
