"""The Redis gateway: connections, the Functions library, queue provisioning, ACL users,
consumer groups, lag polling, reclaim and retention. Errors leave this package as
`redisgw.errors` kinds only."""
