#!/usr/bin/env node
// One aedes MQTT 3.1.1 broker node for mqttsession's tests (mqttsession/testing/brokers.py:
// AedesBroker, AedesCluster). Install its packages once: npm ci --prefix brokers/aedes
//
//   node broker.js --port PORT [--host 127.0.0.1] [--redis-port N [--redis-host 127.0.0.1]]
//                  [--id NAME] [--verbose]
//
// Without --redis-port the node keeps everything in memory. With it, sessions, subscriptions,
// queued and in-flight messages live in Redis (aedes-persistence-redis) and messages are routed
// between nodes through Redis pub/sub (mqemitter-redis): every node started against the same
// Redis is one cluster, and a client that moves from one node to another finds its session.
//
// Prints "READY <host>:<port>" on stdout once the listener is bound and Redis answered; SIGTERM
// or SIGINT closes the listener, the broker and its Redis connections, then exits 0.
'use strict'

const net = require('node:net')

function parseArgs (argv) {
  const opts = { host: '127.0.0.1', port: 0, redisHost: '127.0.0.1', redisPort: 0, id: '', verbose: false }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`)
      return argv[++i]
    }
    if (arg === '--host') opts.host = next()
    else if (arg === '--port') opts.port = Number(next())
    else if (arg === '--redis-host') opts.redisHost = next()
    else if (arg === '--redis-port') opts.redisPort = Number(next())
    else if (arg === '--id') opts.id = next()
    else if (arg === '--verbose') opts.verbose = true
    else throw new Error(`unknown argument ${arg}`)
  }
  if (!Number.isInteger(opts.port) || opts.port <= 0) throw new Error('--port PORT is required')
  return opts
}

function log (...parts) {
  console.log(new Date().toISOString(), ...parts)
}

// Issue 14 saw aedes crash on the first SUBSCRIBE with "stream.pipe is not a function" when
// aedes-persistence-redis handed back async iterables where aedes calls .pipe() (the async-only
// persistence API). With the versions pinned in package-lock.json (aedes 1.2.0 takes
// aedes-persistence-redis 11.x, which answers through aedes-persistence's callback adapter) the
// crash does not reproduce; this wrapper stays as a guard: a stream-returning method that returns
// an async iterable is turned into a Readable, anything else passes through unchanged.
function wrapStreams (persistence) {
  const { Readable } = require('node:stream')
  const asReadable = (value) => {
    if (value && typeof value.pipe !== 'function' && typeof value[Symbol.asyncIterator] === 'function') {
      return Readable.from(value, { objectMode: true })
    }
    return value
  }
  const names = ['createRetainedStream', 'createRetainedStreamCombi', 'outgoingStream', 'streamWill',
    'getClientList']
  for (const name of names) {
    const original = persistence[name]
    if (typeof original !== 'function') continue
    persistence[name] = function (...args) {
      return asReadable(original.apply(this, args))
    }
  }
  return persistence
}

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const { Aedes } = await import('aedes')
  const brokerOpts = {}
  let closeExtras = async () => {}
  if (opts.redisPort) {
    // no ready check (INFO): mqemitter-redis subscribes on its connection at once, and
    // ioredis then sent INFO in subscriber mode and threw ("Connection in subscriber mode,
    // only subscriber commands may be used"), killing the node at start now and then. The
    // Redis here is fresh (nothing to load), so it is ready when it accepts connections.
    const redisOpts = { host: opts.redisHost, port: opts.redisPort, enableReadyCheck: false }
    const persistence = wrapStreams(require('aedes-persistence-redis')(redisOpts))
    const mq = require('mqemitter-redis')(redisOpts)
    brokerOpts.persistence = persistence
    brokerOpts.mq = mq
    closeExtras = async () => {
      await new Promise((resolve) => mq.close(() => resolve()))
    }
  }
  if (opts.id) brokerOpts.id = opts.id
  const aedes = await Aedes.createBroker(brokerOpts)
  const who = (client) => (client ? client.id : '?')
  aedes.on('client', (client) => log('client connected', who(client)))
  aedes.on('clientDisconnect', (client) => log('client disconnected', who(client)))
  aedes.on('clientError', (client, err) => log('client error', who(client), err.message))
  aedes.on('connectionError', (client, err) => log('connection error', who(client), err.message))
  aedes.on('subscribe', (subs, client) => log('subscribe', who(client), JSON.stringify(subs.map((s) => [s.topic, s.qos]))))
  if (opts.verbose) {
    aedes.on('publish', (packet, client) => {
      if (client) log('publish', who(client), packet.topic, `qos=${packet.qos}`, `id=${packet.messageId}`)
    })
    aedes.on('ack', (packet, client) => log('ack', who(client), packet && packet.messageId))
  }

  const server = net.createServer(aedes.handle)
  server.on('error', (err) => {
    // EADDRINUSE and the like: tell the fixture (it retries on another port) and exit.
    console.error(`listen ${opts.host}:${opts.port}: ${err.code === 'EADDRINUSE' ? 'address in use' : err.message}`)
    process.exit(3)
  })
  await new Promise((resolve) => server.listen(opts.port, opts.host, resolve))

  let closing = false
  const shutdown = (signal) => {
    if (closing) return
    closing = true
    log(`${signal}: closing`)
    server.close()
    aedes.close(() => {
      closeExtras().finally(() => {
        log('closed')
        process.exit(0)
      })
    })
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  const backend = opts.redisPort ? `redis ${opts.redisHost}:${opts.redisPort}` : 'memory'
  log(`aedes ${aedesVersion()} node ${aedes.id} (${backend})`)
  console.log(`READY ${opts.host}:${opts.port}`)
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})

function aedesVersion () {
  // aedes' package "exports" hide its package.json from require(); read it from disk.
  const path = require('node:path')
  const fs = require('node:fs')
  const file = path.join(__dirname, 'node_modules', 'aedes', 'package.json')
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')).version
  } catch {
    return '?'
  }
}
