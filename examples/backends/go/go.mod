module example.com/hubbub-backend

go 1.19
