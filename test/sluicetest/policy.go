package sluicetest

// CountEverything is a sluice config body (without listen) for load and
// fault tests: the built-in policy's three rules with their limits raised
// so that every message is counted and none refused, and no trusted
// networks, so that loopback clients (smtp-source, a relaying Postfix)
// are counted too.
const CountEverything = `trusted = []

[log]
level = "info"

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 100000

[[limit]]
name = "msgs-per-ip"
count = "messages"
per = "client_ip"
rate = ["1000000/1m", "100000000/1d"]

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = ["1000000/1m", "100000000/1d"]
`
