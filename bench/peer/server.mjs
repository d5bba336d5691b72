// The peer the gateway is measured against: the BFF as a Node.js team would write it with
// socket.io 4.8 and kafkajs — the same events, rooms, cache, hydration, dedupe and Kafka
// topics as the gateway with its four domain plugins, in production mode (websocket
// transport, no per-message compression, no debug logging).
//
//   PORT=3001 BROKERS=127.0.0.1:9092 node server.mjs      (prints "ready" when consuming)
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { Server } from 'socket.io';
import { Kafka, logLevel } from 'kafkajs';

const PORT = Number(process.env.PORT ?? 3001);
const BROKERS = (process.env.BROKERS ?? '127.0.0.1:9092').split(',');
const DEDUPE_WINDOW_MS = 5_000;
// The longest a fetch waits at the broker for records; the benchmark gives both servers the same.
const FETCH_MAX_WAIT_MS = Number(process.env.FETCH_MAX_WAIT_MS ?? 500);
const TOPICS = {
  weather: 'weather.service.event.updated',
  ticker: 'crypto.service.event.ticker',
  topMovers: 'crypto.service.event.top-movers',
  topCoins: 'crypto.service.event.top-coins',
  news: 'news.service.event.updated',
  stocks: 'stock.service.event.top-performers',
};
const COMMANDS = {
  weatherFetch: 'weather.service.command.fetch',
  cryptoRefresh: 'crypto.service.command.refresh',
  newsRefresh: 'news.service.command.refresh',
};
const GLOBAL_ROOMS = ['crypto.global', 'news.global', 'stock.global'];

// room → [{ key, event, ttlMs }]: what a socket joining the room is hydrated with.
const snapshotsOf = (room) =>
  room.startsWith('weather.')
    ? [{ key: room, event: `${room}.update` }]
    : {
        'crypto.global': [
          { key: 'crypto.top-movers', event: 'cryptoTopMoversResponse' },
          { key: 'crypto.top-coins', event: 'cryptoTopCoinsResponse' },
        ],
        'news.global': [{ key: 'news.global', event: 'newsUpdate' }],
        'stock.global': [{ key: 'stock.top-performers', event: 'stockTopPerformersResponse' }],
      }[room] ?? [];
const TTL_MS = { weather: 600_000, crypto: 300_000, news: 300_000, stock: 300_000 };

// Snapshot requests: answered from the cache, else `loading` and the socket joins the room the
// next snapshot arrives in; some also ask their service for a refresh.
const SNAPSHOT_REQUESTS = {
  cryptoTopMoversRequest: {
    key: 'crypto.top-movers',
    event: 'cryptoTopMoversResponse',
    room: 'crypto.global',
    loading: 'Fetching the latest top movers',
    refresh: { topic: COMMANDS.cryptoRefresh, key: 'top-movers', value: { snapshot: 'top-movers' } },
  },
  cryptoTopCoinsRequest: {
    key: 'crypto.top-coins',
    event: 'cryptoTopCoinsResponse',
    room: 'crypto.global',
    loading: 'Waiting for the next top coins update',
  },
  stockTopPerformersRequest: {
    key: 'stock.top-performers',
    event: 'stockTopPerformersResponse',
    room: 'stock.global',
    loading: 'Waiting for the next scheduled refresh',
  },
  topNewsRequest: {
    key: 'news.global',
    event: 'newsUpdate',
    room: 'news.global',
    loading: 'Fetching the latest news',
    refresh: { topic: COMMANDS.newsRefresh, key: 'global', value: { scope: 'global' } },
  },
};

const cache = new Map(); // key → { payload, expires }
const cacheGet = (key) => {
  const entry = cache.get(key);
  if (!entry) return undefined;
  if (entry.expires < Date.now()) {
    cache.delete(key);
    return undefined;
  }
  return entry.payload;
};
const cachePut = (key, payload) =>
  cache.set(key, { payload, expires: Date.now() + TTL_MS[key.split('.')[0]] });

const success = (data) => ({ status: 'success', data });
const loading = (message) => ({ status: 'loading', message });
const failure = (message) => ({ status: 'error', message });

const cityKey = (city) => {
  if (typeof city !== 'string') return undefined;
  const key = city.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, '-').replace(/^-+|-+$/g, '');
  return key.length >= 1 && [...key].length <= 64 ? key : undefined;
};

const httpServer = createServer((req, res) => {
  res.writeHead(req.url === '/readyz' && ready ? 200 : 404).end();
});
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
});

const kafka = new Kafka({ clientId: 'flux-node-peer', brokers: BROKERS, logLevel: logLevel.NOTHING });
const producer = kafka.producer({ allowAutoTopicCreation: true });
const recentCommands = new Map(); // dedupe key → time published

function publishOnce(topic, key, value, dedupeKey) {
  const now = Date.now();
  const last = recentCommands.get(dedupeKey);
  if (last !== undefined && now - last < DEDUPE_WINDOW_MS) return;
  recentCommands.set(dedupeKey, now);
  producer.send({ topic, messages: [{ key, value: JSON.stringify(value) }] }).catch(() => {
    recentCommands.delete(dedupeKey);
  });
}
setInterval(() => {
  const cutoff = Date.now() - DEDUPE_WINDOW_MS;
  for (const [key, at] of recentCommands) if (at < cutoff) recentCommands.delete(key);
}, DEDUPE_WINDOW_MS).unref();

function joinAndHydrate(socket, room) {
  socket.join(room);
  for (const { key, event } of snapshotsOf(room)) {
    const cached = cacheGet(key);
    if (cached !== undefined) socket.emit(event, cached);
  }
}

const answer = (socket, ack, payload, event) => {
  if (event) socket.emit(event, payload);
  if (typeof ack === 'function') ack(payload);
};
const answerError = (socket, ack, message) => {
  const payload = failure(message);
  socket.emit('error', payload);
  if (typeof ack === 'function') ack(payload);
};

io.on('connection', (socket) => {
  socket.on('getUserId', (ack) => {
    socket.data.userId ??= randomUUID();
    socket.emit('userUniqueId', socket.data.userId);
    if (typeof ack === 'function') ack(socket.data.userId);
  });

  socket.on('userLocationUpdate', (location, userIdOrAck, maybeAck) => {
    const ack = typeof userIdOrAck === 'function' ? userIdOrAck : maybeAck;
    const userId = typeof userIdOrAck === 'string' ? userIdOrAck : location?.userId ?? socket.data.userId;
    const key = cityKey(location?.city);
    if (!key) return answerError(socket, ack, 'userLocationUpdate: city must have 1 to 64 letters or digits');
    joinAndHydrate(socket, `weather.${key}`);
    for (const room of GLOBAL_ROOMS) joinAndHydrate(socket, room);
    const lat = Number(location.lat);
    const lon = Number(location.lon);
    publishOnce(
      COMMANDS.weatherFetch,
      key,
      { city: location.city.trim(), cityKey: key, region: location.region, country: location.country, lat, lon, userId },
      `${userId}|${key}|${lat.toFixed(2)}|${lon.toFixed(2)}`,
    );
    if (typeof ack === 'function') ack({ status: 'success' });
  });

  for (const [request, { key, event, room, loading: waiting, refresh }] of Object.entries(SNAPSHOT_REQUESTS)) {
    socket.on(request, (...args) => {
      const ack = args.find((a) => typeof a === 'function');
      const cached = cacheGet(key);
      if (cached !== undefined) return answer(socket, ack, cached, event);
      answer(socket, ack, loading(waiting), event);
      socket.join(room);
      if (refresh) publishOnce(refresh.topic, refresh.key, refresh.value, `${refresh.topic}|${refresh.key}`);
    });
  }
});

function emitSnapshot(room, event, key, payload) {
  cachePut(key, payload);
  io.to(room).emit(event, payload);
}

const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// Record → room event (and cache), per topic; a malformed record is skipped.
const handlers = {
  [TOPICS.weather]: (key, data) => {
    const city = cityKey(key || data.city);
    if (!city) return;
    data.cityKey = city;
    emitSnapshot(`weather.${city}`, `weather.${city}.update`, `weather.${city}`, success(data));
  },
  [TOPICS.ticker]: (_key, data) => io.to('crypto.global').emit('cryptoTickerResponse', success(data)),
  [TOPICS.topMovers]: (_key, data) => {
    if (Array.isArray(data.topGainers) && Array.isArray(data.topLosers))
      emitSnapshot('crypto.global', 'cryptoTopMoversResponse', 'crypto.top-movers', success(data));
  },
  [TOPICS.topCoins]: (_key, data) => {
    if (Array.isArray(data.topCoins))
      emitSnapshot('crypto.global', 'cryptoTopCoinsResponse', 'crypto.top-coins', success(data));
  },
  [TOPICS.news]: (_key, data) => {
    if (Array.isArray(data.articles))
      emitSnapshot('news.global', 'newsUpdate', 'news.global', { status: 'success', scope: 'global', data: data.articles });
  },
  [TOPICS.stocks]: (_key, data) => {
    if (Array.isArray(data.performers))
      emitSnapshot('stock.global', 'stockTopPerformersResponse', 'stock.top-performers', success(data.performers));
  },
};

let ready = false;
const consumer = kafka.consumer({ groupId: `flux-node-peer-${process.pid}`, maxWaitTimeInMs: FETCH_MAX_WAIT_MS });
consumer.on(consumer.events.GROUP_JOIN, () => {
  if (!ready) {
    ready = true;
    console.log('ready');
  }
});
await new Promise((listening) => httpServer.listen(PORT, '127.0.0.1', listening));
// Like the gateway, create the topics it uses (3 partitions) unless the operator has.
const admin = kafka.admin();
await admin.connect();
await admin.createTopics({
  topics: [...Object.values(TOPICS), ...Object.values(COMMANDS)].map((topic) => ({ topic, numPartitions: 3 })),
});
await admin.disconnect();
await producer.connect();
await consumer.connect();
await consumer.subscribe({ topics: Object.values(TOPICS), fromBeginning: false });
await consumer.run({
  eachMessage: async ({ topic, message }) => {
    let data;
    try {
      data = JSON.parse(message.value.toString());
    } catch {
      return;
    }
    if (isObject(data)) handlers[topic]?.(message.key?.toString() ?? '', data);
  },
});

const shutdown = async () => {
  io.close();
  await consumer.disconnect().catch(() => {});
  await producer.disconnect().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
