'use strict';
// The oracle of tests/hostile/test_router_oracle.py: real routers nobody in this project wrote,
// holding the platform-server's route table, so that what a spelling reaches is decided
// by Fastify 5, Express 5 and the WHATWG URL parser, not by gateproxy's own model.
//
// Starts on 127.0.0.1 (ports from the OS):
//   - Fastify 5 with default options, as NestJS's FastifyAdapter builds it;
//   - Express 5 (with the JSON body parser NestJS's Express adapter adds);
//   - on each of their Node servers, an `upgrade` handler that reads req.url with the
//     WHATWG parser and matches the terminal gateway's path, as the platform does;
//   - a control server: GET /records answers the records so far and clears them.
// Both routers have CORS enabled as the platform-server does (`app.enableCors`).
// Prints one JSON line on stdout: {"fastify": port, "express": port, "control": port}.

const crypto = require('node:crypto');
const http = require('node:http');
const Fastify = require('fastify');
const fastifyCors = require('@fastify/cors');
const express = require('express');
const cors = require('cors');

// The platform-server's CORS options with CORS_ORIGINS empty: any origin is reflected.
const CORS = {
  origin: true,
  methods: ['GET', 'HEAD', 'PUT', 'PATCH', 'POST', 'DELETE', 'OPTIONS'],
  allowedHeaders: ['Content-Type', 'Authorization', 'X-Requested-With', 'Accept'],
  credentials: false,
};

// [method, path, handler name, gated?]. Gated: what gateproxy must answer with 503 while
// docker-runner is down (the /api/containers routes, and POST /test/workspaces).
const ROUTES = [
  ['GET', '/api/containers', 'containers-list', true],
  ['GET', '/api/containers/:containerId/events', 'container-events', true],
  ['DELETE', '/api/containers/:containerId', 'container-delete', true],
  ['POST', '/api/containers/:workspaceId/terminal/sessions', 'terminal-sessions', true],
  ['POST', '/test/workspaces', 'test-workspaces', true],
  ['GET', '/api/threads', 'threads-list', false],
  ['GET', '/api/threads/:id', 'thread-get', false],
  ['DELETE', '/api/threads/:id', 'thread-delete', false],
  ['POST', '/api/threads/:id/messages', 'thread-message', false],
  ['GET', '/api/graph', 'graph', false],
  ['GET', '/api/containers-summary', 'containers-summary', false],
  ['GET', '/test/workspaces', 'test-workspaces-list', false],
  ['GET', '/health', 'health', false],
];
const TERMINAL_WS = /^\/api\/containers\/([0-9a-fA-F-]{36}|[0-9a-fA-F]{64})\/terminal\/ws$/;
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

let records = [];
const NO_ROUTE = '(no route)';

function record(router, handler, gated, method, url, params, headers) {
  records.push({
    router, handler, gated, method, url, params,
    oracleId: headers['x-oracle-id'] === undefined ? null : String(headers['x-oracle-id']),
  });
}

// The terminal gateway's test: the WHATWG parser's pathname against the route pattern.
function onUpgrade(router) {
  return (req, socket) => {
    let pathname = null;
    try {
      pathname = new URL(req.url, 'http://localhost').pathname;
    } catch {
      pathname = null;
    }
    const match = pathname === null ? null : TERMINAL_WS.exec(pathname);
    if (match === null) {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    record(router, 'terminal-ws', true, req.method, req.url, { id: match[1] }, req.headers);
    const accept = crypto.createHash('sha1')
      .update(String(req.headers['sec-websocket-key']) + WS_GUID).digest('base64');
    // A completed handshake then a normal close frame: the gated handler ran.
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n'
      + `Connection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`
      + '\x88\x02\x03\xe8', 'latin1');
  };
}

async function startFastify() {
  const app = Fastify();
  await app.register(fastifyCors, CORS);
  for (const [method, path, name, gated] of ROUTES) {
    app.route({
      method,
      url: path,
      handler: async (req) => {
        record('fastify', name, gated, req.raw.method, req.raw.url, { ...req.params }, req.headers);
        return { router: 'fastify', handler: name };
      },
    });
  }
  // A request no route takes is recorded too, so the tests see the path it arrived with.
  app.setNotFoundHandler(async (req, reply) => {
    record('fastify', NO_ROUTE, false, req.raw.method, req.raw.url, {}, req.headers);
    return reply.code(404).send({ router: 'fastify', handler: NO_ROUTE });
  });
  app.server.on('upgrade', onUpgrade('fastify'));
  await app.listen({ host: '127.0.0.1', port: 0 });
  return app.server.address().port;
}

function startExpress() {
  const app = express();
  app.use(cors(CORS));
  app.use(express.json());
  for (const [method, path, name, gated] of ROUTES) {
    app[method.toLowerCase()](path, (req, res) => {
      record('express', name, gated, req.method, req.originalUrl, { ...req.params }, req.headers);
      res.json({ router: 'express', handler: name });
    });
  }
  app.use((req, res) => {
    record('express', NO_ROUTE, false, req.method, req.originalUrl, {}, req.headers);
    res.status(404).json({ router: 'express', handler: NO_ROUTE });
  });
  const server = http.createServer(app);
  server.on('upgrade', onUpgrade('express'));
  return listen(server);
}

function startControl() {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/records') {
      const body = JSON.stringify(records);
      records = [];
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(body);
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return listen(server);
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

async function main() {
  const ports = {
    fastify: await startFastify(),
    express: await startExpress(),
    control: await startControl(),
  };
  process.stdout.write(`${JSON.stringify(ports)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
