"""The HTTP core of the proxy port: connections, exchanges and the upstream pool, on
`asyncio.Protocol` and httptools (llhttp). It carries the planner's actions out and
decides nothing itself (docs/architecture.md)."""
