// A load generator against a running devnet (see load.sh for the options):
//   1. coins: N fresh addresses of the bitcoind wallet "load" funded from the devnet's
//      funding wallet (sendmany, at most 500 outputs a transaction), waited for until
//      confirmed, so that every deposit spends its own confirmed coin and the mempool's
//      ancestor/descendant limits never come into play;
//   2. deposits: for coin i one transaction spending only it, paying amount + i to the
//      vault with the memo "BTCFI"|01|chain id|recipient and the change back to "load";
//      chains round-robin, recipients a few anvil dev accounts no validator relays from;
//      sent with bounded concurrency;
//   3. finality and mints: every ~500 ms the Bitcoin tip (a deposit is final once its
//      block is `bitcoin.confirmations` deep) and every bridge's Minted logs (matched by
//      the deposit's contract event id; recipient, amount and chain checked; a second
//      Minted for one deposit is a duplicate);
//   4. burns (--burns M): M burnToBitcoin calls, chains round-robin, each from a
//      recipient holding enough wrapped BTC, to a fresh "load" address, all amounts
//      distinct; each paid once the block scan finds amount - peg_out_fee paid to it;
//   5. prints throughput, latency percentiles and counts; exits 1 on anything missing,
//      duplicated, wrong, or a timeout; --json FILE writes the same (also on failure).
import { writeFileSync } from "node:fs";
import {
  addressWord,
  api,
  btc,
  BurnToBitcoin,
  bytesTail,
  call,
  contractEventId,
  devnetDir,
  loadDevnet,
  memo,
  Minted,
  rpc,
  sats,
  selector,
  sendTx,
  sleep,
  word,
  wordAt,
} from "./lib.mjs";

// ---------------------------------------------------------------- options

const usage = `usage: load.sh [--deposits N] [--burns M] [--chains NAME,...] [--amount SATS]
               [--concurrency K] [--timeout SECS] [--json FILE]
  --deposits N      deposits to send, each from its own confirmed coin (default 100)
  --burns M         burnToBitcoin calls once every mint is in (default 0)
  --chains A,B      only these chains (default: every chain in devnet.json)
  --amount SATS     deposit i pays SATS + i sats to the vault (default 20000)
  --concurrency K   deposits / burns in flight at once (default 16)
  --timeout SECS    longest wait for each phase: funding, mints, payouts (default 900)
  --json FILE       write a summary (figures, per-deposit and per-burn records)
The devnet comes from $BTCFI_DEVNET_DIR/devnet.json (default <repo>/.devnet).`;
const opts = { deposits: 100, burns: 0, chains: null, amount: 20000, concurrency: 16, timeout: 900, json: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const [k, inline] = argv[i].split(/=(.*)/s);
  const val = () => {
    const v = inline ?? argv[++i];
    if (v === undefined) {
      console.error(`load.sh: ${k} needs a value\n${usage}`);
      process.exit(2);
    }
    return v;
  };
  if (k === "--deposits") opts.deposits = Number(val());
  else if (k === "--burns") opts.burns = Number(val());
  else if (k === "--chains") opts.chains = val().split(",").filter(Boolean);
  else if (k === "--amount") opts.amount = Number(val());
  else if (k === "--concurrency") opts.concurrency = Number(val());
  else if (k === "--timeout") opts.timeout = Number(val());
  else if (k === "--json") opts.json = val();
  else if (k === "-h" || k === "--help") {
    console.log(usage);
    process.exit(0);
  } else {
    console.error(`load.sh: unknown argument ${argv[i]}\n${usage}`);
    process.exit(2);
  }
}
const badOpt = (msg) => {
  console.error(`load.sh: ${msg}\n${usage}`);
  process.exit(2);
};
if (!Number.isInteger(opts.deposits) || opts.deposits < 1) badOpt("--deposits must be a positive integer");
if (!Number.isInteger(opts.burns) || opts.burns < 0) badOpt("--burns must be a non-negative integer");
if (!Number.isInteger(opts.amount) || opts.amount < 1) badOpt("--amount must be a positive integer (sats)");
if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) badOpt("--concurrency must be a positive integer");
if (!(opts.timeout > 0)) badOpt("--timeout must be a positive number of seconds");

// ---------------------------------------------------------------- constants

const WALLET = "load";
/// Outputs per funding transaction (sendmany).
const FUND_BATCH = 500;
/// Each coin holds its deposit plus this much: the deposit's fee and its change.
const COIN_MARGIN = 10_000;
/// The deposit transaction's fee (one P2WPKH input, vault + OP_RETURN + change: ~200 vB,
/// so ~10 sat/vB; blocks never fill on the devnet).
const DEPOSIT_FEE = 2_000;
/// Anvil dev accounts used as recipients (and burners), at most.
const MAX_RECIPIENTS = 4;
const POLL_MS = 500;
const PROGRESS_MS = 10_000;
/// No new Bitcoin block for this long: the devnet's miner is not running.
const STALL_MS = 90_000;

// ---------------------------------------------------------------- state

const t0 = Date.now();
const rel = (t) => (t == null ? null : Math.round(t - t0) / 1000);
const secs = (from = t0) => Math.round((Date.now() - from) / 100) / 10;
const stamp = () => `+${secs().toFixed(1).padStart(6)}s`;
const say = (who, msg) => console.log(`[${stamp()}] ${who.padEnd(8)} ${msg}`);
const f2 = (x) => (x == null ? "-" : x.toFixed(2));

let devnet;
try {
  devnet = loadDevnet();
} catch (e) {
  console.error(`load.sh: ${e.message}`);
  process.exit(1);
}
const B = devnet.bitcoin;
const auth = [B.rpc_user, B.rpc_password];
const fundingWallet = B.funding_wallet || "miner";
const pegOutFee = Number(B.peg_out_fee ?? 2000);
const confirmations = Number(B.confirmations ?? 2);
const minDeposit = Number(B.min_deposit ?? 0);

const summary = {
  ok: false,
  error: null,
  devnet_dir: devnetDir(),
  started_at: new Date(t0).toISOString(),
  options: { ...opts },
  vault_address: B.vault_address,
  confirmations,
  peg_out_fee: pegOutFee,
};
const deposits = [];
const burns = [];
function writeSummary() {
  summary.elapsed_secs = secs();
  if (!opts.json) return;
  const out = {
    ...summary,
    deposit_records: deposits.map((d) => ({
      i: d.i,
      outpoint: d.txid ? `${d.txid}:${d.vout}` : null,
      coin: d.coin ? `${d.coin.txid}:${d.coin.vout}` : null,
      chain: d.chain.name,
      chain_id: d.chain.chain_id,
      recipient: d.recipient,
      amount_sats: d.amount,
      contract_event_id: d.eventId ?? null,
      sent_at_secs: rel(d.sentAt),
      block_height: d.height ?? null,
      final_at_secs: rel(d.finalAt),
      mint: d.mint ? { ...d.mint, at_secs: rel(d.mint.at), at: undefined } : null,
      duplicate_mints: d.dups.length ? d.dups : undefined,
      error: d.error ?? undefined,
    })),
    burn_records: burns.map((b) => ({
      j: b.j,
      chain: b.chain.name,
      from: b.from,
      amount_sats: b.amount,
      address: b.address,
      tx_hash: b.txHash ?? null,
      event_id: b.eventId ?? null,
      mined_at_secs: rel(b.minedAt),
      payout: b.payout ? { ...b.payout, at_secs: rel(b.payout.at), at: undefined } : null,
      extra_payouts: b.extra.length ? b.extra : undefined,
      error: b.error ?? undefined,
    })),
  };
  writeFileSync(opts.json, JSON.stringify(out, null, 2) + "\n");
}

// ---------------------------------------------------------------- RPC

const transient = (e) => /HTTP 50[23]|Work queue depth|fetch failed|ECONNRESET|ECONNREFUSED|socket hang up|UND_ERR/i.test(e.message);
/// rpc(), retried with backoff on errors that mean "not processed" (bitcoind's work
/// queue full, a dropped connection).
async function retrying(f) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await f();
    } catch (e) {
      if (!transient(e) || attempt >= 10) throw e;
      await sleep(50 * 2 ** Math.min(attempt, 6));
    }
  }
}
const bitcoind = (method, params = [], wallet = null) =>
  retrying(() => rpc(wallet ? `${B.rpc_url}/wallet/${wallet}` : B.rpc_url, method, params, auth));
const evm = (c, method, params = []) => retrying(() => rpc(c.rpc_url, method, params));

/// `f` on every item, at most `limit` at once; resolves when all are done (errors are
/// the callback's business).
async function pool(items, limit, f) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await f(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}


// ---------------------------------------------------------------- statistics

/// Nearest-rank percentile of an ascending array.
const pct = (sorted, p) => (sorted.length ? sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] : null);
const dist = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const r = (x) => (x == null ? null : Math.round(x * 1000) / 1000);
  return { n: s.length, min: r(s[0] ?? null), p50: r(pct(s, 50)), p90: r(pct(s, 90)), p99: r(pct(s, 99)), max: r(s.at(-1) ?? null) };
};

// ---------------------------------------------------------------- monitor

// One loop follows the Bitcoin tip (deposit heights, finality, payouts) and every
// bridge's Minted logs while deposits and burns are in flight.
const txHeight = new Map(); // txid -> height, for every tx of every scanned block
const tipSeenAt = new Map(); // height -> when the tip was first seen at it
const depositByTxid = new Map();
const depositByEvent = new Map();
const burnByAddress = new Map();
const payoutTxids = new Set();
const foreignMints = { count: 0 };
let scannedHeight = null;
let tip = null;
let lastTipChange = Date.now();
let scanVerbose = false;
let chains = [];
const evmCursor = new Map();
let monitorError = null;
let stopMonitor = false;

function placeDeposit(d) {
  const h = txHeight.get(d.txid);
  if (h !== undefined && d.height == null) d.height = h;
  if (d.height != null && d.finalAt == null) {
    const at = tipSeenAt.get(d.height + confirmations - 1);
    if (at !== undefined) d.finalAt = at;
  }
}

async function pollBitcoin() {
  const t = await bitcoind("getblockcount");
  const now = Date.now();
  if (t !== tip) {
    tip = t;
    lastTipChange = now;
  } else if (now - lastTipChange > STALL_MS) {
    throw new Error(`no new Bitcoin block for ${Math.round((now - lastTipChange) / 1000)} s (tip ${tip}): is the devnet's miner running?`);
  }
  for (let h = scannedHeight + 1; h <= t; h++) {
    if (!tipSeenAt.has(h)) tipSeenAt.set(h, now);
    const hash = await bitcoind("getblockhash", [h]);
    const verbose = scanVerbose;
    const block = await bitcoind("getblock", [hash, verbose ? 2 : 1]);
    for (const tx of block.tx) {
      const txid = verbose ? tx.txid : tx;
      txHeight.set(txid, h);
      const d = depositByTxid.get(txid);
      if (d) d.height = h;
      if (!verbose) continue;
      for (const o of tx.vout) {
        const b = burnByAddress.get(o.scriptPubKey?.address);
        if (!b) continue;
        const p = { txid, vout: o.n, amount_sats: sats(o.value), height: h, at: tipSeenAt.get(h) };
        payoutTxids.add(txid);
        if (b.payout) b.extra.push({ txid, vout: o.n, amount_sats: p.amount_sats, height: h });
        else b.payout = p;
      }
    }
    scannedHeight = h;
  }
  for (const d of deposits) if (d.txid && d.finalAt == null) placeDeposit(d);
}

async function pollChain(c) {
  const head = Number(BigInt(await evm(c, "eth_blockNumber")));
  const from = evmCursor.get(c.name);
  if (head < from) return;
  const logs = await evm(c, "eth_getLogs", [
    { address: c.bridge_address, fromBlock: "0x" + from.toString(16), toBlock: "0x" + head.toString(16), topics: [Minted] },
  ]);
  const now = Date.now();
  for (const log of logs) {
    if (log.removed) continue;
    const d = depositByEvent.get(log.topics[1]);
    if (!d) {
      foreignMints.count++;
      continue;
    }
    const m = {
      chain: c.name,
      tx_hash: log.transactionHash,
      block_number: Number(BigInt(log.blockNumber)),
      recipient: "0x" + log.topics[2].slice(-40),
      amount_sats: Number(wordAt(log.data, 0)),
      at: now,
    };
    if (d.mint) {
      d.dups.push({ ...m, at: undefined, at_secs: rel(now) });
      say("mint", `DUPLICATE: deposit ${d.txid}:${d.vout} minted again on ${c.name} in ${m.tx_hash} (first ${d.mint.chain} ${d.mint.tx_hash})`);
      continue;
    }
    const problems = [];
    if (c.name !== d.chain.name) problems.push(`on ${c.name}, expected ${d.chain.name}`);
    if (m.recipient.toLowerCase() !== d.recipient.toLowerCase()) problems.push(`to ${m.recipient}, expected ${d.recipient}`);
    if (m.amount_sats !== d.amount) problems.push(`${m.amount_sats} sats, expected ${d.amount}`);
    if (problems.length) {
      m.wrong = problems.join("; ");
      say("mint", `WRONG: deposit ${d.txid}:${d.vout} minted ${m.wrong} (${m.tx_hash})`);
    }
    d.mint = m;
  }
  evmCursor.set(c.name, head + 1);
}

async function monitor() {
  while (!stopMonitor) {
    const started = Date.now();
    try {
      await Promise.all([pollBitcoin(), ...chains.map(pollChain)]);
    } catch (e) {
      if (/no new Bitcoin block/.test(e.message)) {
        monitorError = e;
        return;
      }
      say("monitor", `poll failed (will retry): ${e.message.slice(0, 300)}`);
    }
    await sleep(Math.max(0, POLL_MS - (Date.now() - started)));
  }
}

/// Waits until `done()` or the deadline, printing `progress()` every PROGRESS_MS.
async function until(what, done, deadline, progress) {
  let lastProgress = Date.now();
  for (;;) {
    if (monitorError) throw monitorError;
    if (done()) return true;
    if (Date.now() > deadline) return false;
    if (Date.now() - lastProgress >= PROGRESS_MS) {
      lastProgress = Date.now();
      await progress().catch((e) => say(what, `progress: ${e.message}`));
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------- validators

/// The gauges and counters worth watching under load, summed per series, from one
/// validator's /metrics.
async function metricsOf(v) {
  const res = await fetch(v.metrics_url || v.api_url + "/metrics", { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    if (!/^btcfi_(signing_queue_depth|signing_sessions_in_flight|signing_sessions_total|signing_attempts_total|relay_submissions_total|releases_total|releases_pending|p2p_|consensus_certified|chain_poll_errors_total|rpc_errors_total|finality_to_signature_seconds_(sum|count))/.test(line)) continue;
    const sp = line.lastIndexOf(" ");
    out[line.slice(0, sp)] = Number(line.slice(sp + 1));
  }
  return out;
}
const gaugeBrief = (m) => {
  const g = (name) =>
    Object.entries(m)
      .filter(([k]) => k.startsWith(name + "{"))
      .map(([k, v]) => `${(k.match(/key="([^"]*)"/) || [])[1] ?? "?"}=${v}`)
      .join(",");
  return `queue ${g("btcfi_signing_queue_depth") || "-"} in-flight ${g("btcfi_signing_sessions_in_flight") || "-"}`;
};
async function snapshotValidators() {
  const out = {};
  await Promise.all(
    devnet.validators.map(async (v) => {
      try {
        out[v.name] = await metricsOf(v);
      } catch (e) {
        out[v.name] = { error: e.message };
      }
    }),
  );
  return out;
}

// ---------------------------------------------------------------- phases

async function preflight() {
  if (!B.vault_address) throw new Error("devnet.json has no bitcoin.vault_address: did up.sh finish (DKG)?");
  if (!devnet.validators?.length) throw new Error("devnet.json lists no validators: did up.sh finish?");
  if (opts.amount < minDeposit) throw new Error(`--amount ${opts.amount} is below the validators' min_deposit (${minDeposit})`);
  for (const v of devnet.validators) {
    const r = await fetch(v.api_url + "/ready", { signal: AbortSignal.timeout(5000) }).catch((e) => ({ ok: false, statusText: e.message }));
    if (!r.ok) throw new Error(`validator ${v.name} is not ready (${v.api_url}/ready: ${r.status ?? ""} ${r.statusText}); is the devnet up?`);
  }
  chains = opts.chains ? devnet.evm.filter((c) => opts.chains.includes(c.name)) : devnet.evm;
  if (opts.chains && chains.length !== new Set(opts.chains).size) {
    throw new Error(`unknown chain in --chains ${opts.chains}: devnet has ${devnet.evm.map((c) => c.name)}`);
  }
  for (const c of chains) {
    if (wordAt(await call(c.rpc_url, c.bridge_address, selector("groupKey()")), 0) === 0n) {
      throw new Error(`${c.name}: the bridge has no group key (setInitialKey was not called; rerun up.sh)`);
    }
  }
  // Recipients: anvil dev accounts that are neither the deployer/guardian (0) nor any
  // validator's relayer (1..N), as in demo.mjs's recipient-index logic.
  const accounts = await evm(chains[0], "eth_accounts");
  const relayers = new Set(devnet.validators.map((v) => (v.relayer_address || "").toLowerCase()));
  const first = devnet.validators.length + 1;
  const recipients = accounts.slice(first).filter((a) => !relayers.has(a.toLowerCase())).slice(0, MAX_RECIPIENTS);
  if (!recipients.length) throw new Error(`anvil has no dev account beyond the ${first} deployer and relayer accounts`);
  summary.recipients = recipients;
  summary.chains = chains.map((c) => c.name);

  const wallets = await bitcoind("listwallets");
  if (!wallets.includes(WALLET)) {
    await bitcoind("loadwallet", [WALLET]).catch(() => bitcoind("createwallet", [WALLET]));
  }
  const need = opts.deposits * (opts.amount + COIN_MARGIN) + (opts.deposits * (opts.deposits - 1)) / 2;
  const bal = sats(await bitcoind("getbalance", [], fundingWallet));
  if (bal < need) throw new Error(`the funding wallet ${fundingWallet} holds ${btc(bal)} BTC, the coins need ${btc(need)}`);
  say("load", `${opts.deposits} deposits of ${opts.amount}+i sats over ${chains.map((c) => c.name).join(", ")} to ${recipients.length} recipients (anvil accounts ${first}..${first + recipients.length - 1}); ${opts.burns} burns; confirmation depth ${confirmations}; vault ${B.vault_address}`);
  return recipients;
}

/// N fresh addresses of "load", each paid amount + i + COIN_MARGIN from the funding
/// wallet, waited for until every funding transaction is in a block.
async function fundCoins() {
  const tFund = Date.now();
  const coins = new Array(opts.deposits);
  const addresses = new Array(opts.deposits);
  await pool(addresses, opts.concurrency, async (_, i) => {
    addresses[i] = await bitcoind("getnewaddress", [`load-coin`, "bech32"], WALLET);
  });
  const value = (i) => opts.amount + i + COIN_MARGIN;
  const txids = [];
  for (let s = 0; s < opts.deposits; s += FUND_BATCH) {
    const outs = {};
    for (let i = s; i < Math.min(s + FUND_BATCH, opts.deposits); i++) outs[addresses[i]] = btc(value(i));
    const txid = await bitcoind("sendmany", ["", outs], fundingWallet);
    const tx = await bitcoind("getrawtransaction", [txid, true]);
    const voutOf = new Map(tx.vout.map((o) => [o.scriptPubKey.address, o.n]));
    for (let i = s; i < Math.min(s + FUND_BATCH, opts.deposits); i++) {
      const vout = voutOf.get(addresses[i]);
      if (vout === undefined) throw new Error(`funding tx ${txid} has no output to ${addresses[i]}`);
      coins[i] = { txid, vout, address: addresses[i], value_sats: value(i) };
    }
    txids.push(txid);
  }
  say("coins", `${opts.deposits} coins funded from ${fundingWallet} in ${txids.length} tx(s) (${txids.map((t) => t.slice(0, 12)).join(", ")}); waiting for a block`);
  const deadline = Date.now() + opts.timeout * 1000;
  let lastHeight = await bitcoind("getblockcount");
  let lastChange = Date.now();
  for (;;) {
    const conf = await Promise.all(txids.map(async (t) => (await bitcoind("gettransaction", [t], fundingWallet)).confirmations));
    if (conf.every((c) => c >= 1)) break;
    const h = await bitcoind("getblockcount");
    if (h !== lastHeight) [lastHeight, lastChange] = [h, Date.now()];
    if (Date.now() - lastChange > STALL_MS) throw new Error(`no new Bitcoin block for ${STALL_MS / 1000} s: is the devnet's miner running?`);
    if (Date.now() > deadline) throw new Error(`timed out after ${opts.timeout} s waiting for the funding txs ${txids.join(", ")} to confirm`);
    await sleep(POLL_MS);
  }
  summary.funding = { txids, secs: secs(tFund) };
  say("coins", `funding confirmed after ${secs(tFund)} s`);
  return coins;
}

async function sendDeposit(d) {
  const change = await bitcoind("getrawchangeaddress", ["bech32"], WALLET);
  const outputs = [{ [B.vault_address]: btc(d.amount) }, { data: memo(d.chain.chain_id, d.recipient) }, { [change]: btc(d.coin.value_sats - d.amount - DEPOSIT_FEE) }];
  const raw = await bitcoind("createrawtransaction", [[{ txid: d.coin.txid, vout: d.coin.vout }], outputs]);
  const signed = await bitcoind("signrawtransactionwithwallet", [raw], WALLET);
  if (!signed.complete) throw new Error(`the wallet ${WALLET} could not sign the deposit: ${JSON.stringify(signed.errors)}`);
  let txid;
  try {
    txid = await bitcoind("sendrawtransaction", [signed.hex]);
  } catch (e) {
    // A retried send the node had taken after all.
    if (!/already/i.test(e.message)) throw e;
    txid = (await bitcoind("decoderawtransaction", [signed.hex])).txid;
  }
  d.sentAt = Date.now();
  d.txid = txid;
  d.vout = 0; // createrawtransaction keeps the output order: the vault first
  d.eventId = contractEventId(txid, 0);
  depositByTxid.set(txid, d);
  depositByEvent.set(d.eventId, d);
  placeDeposit(d);
}

async function depositPhase(coins, recipients) {
  for (let i = 0; i < opts.deposits; i++) {
    const chain = chains[i % chains.length];
    const recipient = recipients[Math.floor(i / chains.length) % recipients.length];
    deposits.push({ i, coin: coins[i], chain, recipient, amount: opts.amount + i, dups: [] });
  }
  const tSend = Date.now();
  let sent = 0;
  let lastSay = Date.now();
  await pool(deposits, opts.concurrency, async (d) => {
    try {
      await sendDeposit(d);
      sent++;
      if (Date.now() - lastSay >= PROGRESS_MS) {
        lastSay = Date.now();
        say("deposit", `${sent}/${opts.deposits} sent`);
      }
    } catch (e) {
      d.error = e.message;
      say("deposit", `FAILED deposit ${d.i} (${d.amount} sats to ${d.chain.name}): ${e.message.slice(0, 300)}`);
    }
  });
  const failed = deposits.filter((d) => d.error).length;
  const first = Math.min(...deposits.filter((d) => d.sentAt).map((d) => d.sentAt));
  const last = Math.max(...deposits.filter((d) => d.sentAt).map((d) => d.sentAt));
  summary.send = {
    sent: sent,
    failed,
    secs: Math.round(Date.now() - tSend) / 1000,
    per_sec: sent > 1 ? Math.round(((sent - 1) / ((last - first) / 1000)) * 100) / 100 : null,
  };
  say("deposit", `${sent} sent in ${summary.send.secs} s (${summary.send.per_sec ?? "-"}/s)${failed ? `, ${failed} FAILED to send` : ""}`);
  return tSend;
}

function depositCounts() {
  const live = deposits.filter((d) => d.txid);
  return {
    sent: live.length,
    in_blocks: live.filter((d) => d.height != null).length,
    final: live.filter((d) => d.finalAt != null).length,
    minted: live.filter((d) => d.mint).length,
    duplicates: live.reduce((n, d) => n + d.dups.length, 0),
    wrong: live.filter((d) => d.mint?.wrong).length,
  };
}

async function mintPhase(tSend) {
  const deadline = tSend + opts.timeout * 1000;
  const v0 = devnet.validators[0];
  const done = () => deposits.every((d) => !d.txid || d.mint);
  const ok = await until("mint", done, deadline, async () => {
    const c = depositCounts();
    let extra = "";
    const waiting = deposits.filter((d) => d.txid && !d.mint && d.finalAt != null).sort((a, b) => a.finalAt - b.finalAt)[0];
    if (waiting) {
      const s = await api(v0, `/v1/deposits/${waiting.txid}:${waiting.vout}`).catch(() => null);
      extra = `; oldest unminted final deposit (${secs(waiting.finalAt)} s ago) on ${v0.name}: ${s?.status ?? "?"}${s?.gate ? `/${s.gate}` : ""}`;
    }
    const m = await metricsOf(v0).catch(() => null);
    say("mint", `tip ${tip}: ${c.in_blocks}/${c.sent} in blocks, ${c.final} final, ${c.minted} minted${c.duplicates ? `, ${c.duplicates} DUPLICATES` : ""}${m ? ` | ${v0.name} ${gaugeBrief(m)}` : ""}${extra}`);
  });
  return ok;
}

async function burnPhase(recipients) {
  // Balances: what each recipient holds on each chain, less what is already assigned.
  const held = new Map();
  const balanceOf = async (c, a) => wordAt(await call(c.rpc_url, c.token_address, selector("balanceOf(address)") + addressWord(a)), 0);
  for (const c of chains) for (const a of recipients) held.set(`${c.name}/${a}`, await balanceOf(c, a));
  const addresses = new Array(opts.burns);
  await pool(addresses, opts.concurrency, async (_, j) => {
    addresses[j] = await bitcoind("getnewaddress", [`load-burn`, "bech32"], WALLET);
  });
  const spks = await Promise.all(addresses.map(async (a) => (await bitcoind("getaddressinfo", [a], WALLET)).scriptPubKey));
  let minimum = 0n;
  for (const c of chains) {
    const m = wordAt(await call(c.rpc_url, c.bridge_address, selector("minBurnToBitcoin(bytes)") + word(32) + bytesTail(spks[0])), 0);
    if (m > minimum) minimum = m;
  }
  const base = Math.max(Number(minimum) + 1000, Math.floor(opts.amount / 2));
  summary.burn_minimum_sats = Number(minimum);
  for (let j = 0; j < opts.burns; j++) {
    const chain = chains[j % chains.length];
    const amount = base + j;
    // The recipient with the most wrapped BTC left on this chain.
    let from = null;
    let most = -1n;
    for (const a of recipients) {
      const h = held.get(`${chain.name}/${a}`);
      if (h > most) [from, most] = [a, h];
    }
    if (most < BigInt(amount)) throw new Error(`no recipient holds ${amount} sats of wrapped BTC on ${chain.name} for burn ${j} (most: ${most})`);
    held.set(`${chain.name}/${from}`, most - BigInt(amount));
    const b = { j, chain, from, amount, address: addresses[j], spk: spks[j], extra: [] };
    burns.push(b);
    burnByAddress.set(b.address, b);
  }
  say("burn", `${opts.burns} burnToBitcoin of ${base}..${base + opts.burns - 1} sats (minimum ${minimum}) over ${chains.map((c) => c.name).join(", ")}`);
  scanVerbose = true;
  // Blocks already scanned (before the flag) cannot hold a payout of a burn not yet made.
  const tBurn = Date.now();
  await pool(burns, opts.concurrency, async (b) => {
    try {
      b.sentAt = Date.now();
      const receipt = await sendTx(
        b.chain.rpc_url,
        b.from,
        b.chain.bridge_address,
        selector("burnToBitcoin(uint64,bytes)") + word(b.amount) + word(64) + bytesTail(b.spk),
        `burnToBitcoin on ${b.chain.name}`,
      );
      b.minedAt = Date.now();
      const log = receipt.logs.find((l) => l.address.toLowerCase() === b.chain.bridge_address.toLowerCase() && l.topics[0] === BurnToBitcoin);
      if (!log) throw new Error(`burnToBitcoin emitted no BurnToBitcoin event (tx ${receipt.transactionHash})`);
      if (wordAt(log.data, 0) !== BigInt(b.amount)) throw new Error(`BurnToBitcoin says ${wordAt(log.data, 0)} sats, burned ${b.amount}`);
      b.txHash = receipt.transactionHash;
      b.nonce = Number(BigInt(log.topics[1]));
      b.eventId = `${b.chain.chain_id}:${receipt.transactionHash.slice(2)}:${Number(BigInt(log.logIndex))}`;
    } catch (e) {
      b.error = e.message;
      say("burn", `FAILED burn ${b.j} (${b.amount} sats on ${b.chain.name} from ${b.from}): ${e.message.slice(0, 300)}`);
    }
  });
  const made = burns.filter((b) => b.txHash).length;
  say("burn", `${made} burns mined in ${secs(tBurn)} s; waiting for the payouts`);
  const v0 = devnet.validators[0];
  const deadline = tBurn + opts.timeout * 1000;
  const ok = await until(
    "payout",
    () => burns.every((b) => !b.txHash || b.payout),
    deadline,
    async () => {
      const paid = burns.filter((b) => b.payout).length;
      const waiting = burns.find((b) => b.txHash && !b.payout);
      let extra = "";
      if (waiting) {
        const a = await api(v0, `/v1/attestations/${waiting.eventId}`).catch(() => null);
        extra = `; burn ${waiting.j} on ${v0.name}: ${a?.status ?? "?"}`;
      }
      say("payout", `tip ${tip}: ${paid}/${made} paid in ${payoutTxids.size} tx(s)${extra}`);
    },
  );
  return ok;
}

// ---------------------------------------------------------------- report

function report(mintsDone, burnsDone) {
  const c = depositCounts();
  const live = deposits.filter((d) => d.txid);
  const missing = live.filter((d) => !d.mint);
  const minted = live.filter((d) => d.mint);
  const finals = live.filter((d) => d.finalAt != null).map((d) => d.finalAt);
  const mintTimes = minted.map((d) => d.mint.at);
  const firstFinal = finals.length ? Math.min(...finals) : null;
  const lastFinal = finals.length ? Math.max(...finals) : null;
  const lastMint = mintTimes.length ? Math.max(...mintTimes) : null;
  const lat = minted.filter((d) => d.finalAt != null).map((d) => (d.mint.at - d.finalAt) / 1000);
  const sentToMint = minted.map((d) => (d.mint.at - d.sentAt) / 1000);
  const window = firstFinal != null && lastMint != null ? (lastMint - firstFinal) / 1000 : null;
  summary.deposits = {
    requested: opts.deposits,
    send_failed: deposits.filter((d) => d.error).length,
    ...c,
    missing: missing.length,
    mints_not_on_chain_of_memo: minted.filter((d) => d.mint.chain !== d.chain.name).length,
    other_mints_seen: foreignMints.count,
    first_final_at_secs: rel(firstFinal),
    last_final_at_secs: rel(lastFinal),
    last_mint_at_secs: rel(lastMint),
    mints_per_sec: window > 0 ? Math.round((minted.length / window) * 100) / 100 : null,
    mint_window_secs: window,
    latency_final_to_mint_secs: dist(lat),
    latency_sent_to_mint_secs: dist(sentToMint),
    last_final_to_last_mint_secs: lastFinal != null && lastMint != null ? (lastMint - lastFinal) / 1000 : null,
    per_chain: chains.map((ch) => {
      const mine = live.filter((d) => d.chain.name === ch.name);
      const l = mine.filter((d) => d.mint && d.finalAt != null).map((d) => (d.mint.at - d.finalAt) / 1000);
      return { name: ch.name, sent: mine.length, minted: mine.filter((d) => d.mint).length, latency_final_to_mint_secs: dist(l) };
    }),
    timed_out: !mintsDone,
  };
  const D = summary.deposits;
  const L = D.latency_final_to_mint_secs;
  console.log("");
  console.log(`deposits: ${D.sent} sent${D.send_failed ? ` (${D.send_failed} FAILED to send)` : ""} in ${summary.send?.secs ?? "-"} s, ${D.in_blocks} in blocks, ${D.final} final, ${D.minted} minted, ${D.duplicates} duplicates, ${D.wrong} wrong, ${D.missing} missing${mintsDone ? "" : " (TIMED OUT)"}`);
  console.log(
    window != null
      ? `mints/s:  ${D.mints_per_sec ?? "-"} (${D.minted} mints from the first finality at +${f2(D.first_final_at_secs)} s to the last mint at +${f2(D.last_mint_at_secs)} s: ${f2(window)} s)`
      : `mints/s:  - (${D.final ? "no mint seen" : "no deposit final"})`,
  );
  console.log(`finality→mint: p50 ${f2(L.p50)} s, p90 ${f2(L.p90)} s, p99 ${f2(L.p99)} s, max ${f2(L.max)} s (min ${f2(L.min)} s)`);
  console.log(`sent→mint:     p50 ${f2(D.latency_sent_to_mint_secs.p50)} s, p99 ${f2(D.latency_sent_to_mint_secs.p99)} s, max ${f2(D.latency_sent_to_mint_secs.max)} s`);
  console.log(`last finality → last mint: ${f2(D.last_final_to_last_mint_secs)} s`);
  for (const p of D.per_chain) {
    console.log(`  ${p.name.padEnd(9)} ${p.minted}/${p.sent} minted, finality→mint p50 ${f2(p.latency_final_to_mint_secs.p50)} s, max ${f2(p.latency_final_to_mint_secs.max)} s`);
  }
  let failed = D.send_failed > 0 || D.missing > 0 || D.duplicates > 0 || D.wrong > 0 || !mintsDone;
  if (opts.burns > 0) {
    const made = burns.filter((b) => b.txHash);
    const paid = made.filter((b) => b.payout);
    const wrong = paid.filter((b) => b.payout.amount_sats !== b.amount - pegOutFee || b.extra.length);
    const blat = paid.map((b) => (b.payout.at - b.minedAt) / 1000);
    summary.burns = {
      requested: opts.burns,
      attempted: burns.length,
      failed: burns.filter((b) => b.error).length,
      mined: made.length,
      paid: paid.length,
      wrong: wrong.length,
      missing: made.length - paid.length,
      payout_txs: payoutTxids.size,
      payout_txids: [...payoutTxids],
      latency_burn_to_payout_secs: dist(blat),
      timed_out: burnsDone === false,
      skipped: burnsDone == null ? "the mints did not all land" : undefined,
    };
    const S = summary.burns;
    if (burnsDone == null) console.log(`burns: skipped (the mints did not all land)`);
    else {
      console.log(`burns:    ${S.mined}/${S.requested} burned${S.failed ? ` (${S.failed} FAILED)` : ""}, ${S.paid} paid, ${S.wrong} wrong, ${S.missing} missing${burnsDone ? "" : " (TIMED OUT)"}, in ${S.payout_txs} Bitcoin tx(s)`);
      console.log(`burn→payout: p50 ${f2(S.latency_burn_to_payout_secs.p50)} s, p99 ${f2(S.latency_burn_to_payout_secs.p99)} s, max ${f2(S.latency_burn_to_payout_secs.max)} s`);
      for (const b of wrong) {
        console.log(`  WRONG payout for burn ${b.j}: ${b.payout.amount_sats} sats in ${b.payout.txid} (expected ${b.amount - pegOutFee})${b.extra.length ? `, plus ${b.extra.length} more payment(s)` : ""}`);
      }
    }
    failed ||= S.mined !== S.requested || S.missing > 0 || S.wrong > 0 || burnsDone !== true;
  }
  return { failed, missing };
}

async function explainMissing(missing) {
  const v0 = devnet.validators[0];
  const sample = missing.slice(0, 10);
  summary.missing_sample = [];
  for (const d of sample) {
    const s = await api(v0, `/v1/deposits/${d.txid}:${d.vout}`).catch((e) => ({ error: e.message }));
    const brief = { outpoint: `${d.txid}:${d.vout}`, chain: d.chain.name, height: d.height ?? null, final: d.finalAt != null, status: s?.status, gate: s?.gate, relay: s?.relay };
    summary.missing_sample.push(brief);
    console.log(`  missing ${brief.outpoint} (${d.chain.name}, block ${brief.height ?? "-"}): ${v0.name} says ${s?.status ?? "?"}${s?.gate ? `, gate ${s.gate}` : ""}${s?.relay ? `, relay ${JSON.stringify(s.relay)}` : ""}`);
  }
}

// ---------------------------------------------------------------- main

let failed = false;
try {
  const recipients = await preflight();
  const coins = await fundCoins();
  // Followers start at the current heads: mints of this run's deposits come later.
  scannedHeight = await bitcoind("getblockcount");
  tip = scannedHeight;
  for (const c of chains) evmCursor.set(c.name, Number(BigInt(await evm(c, "eth_blockNumber"))));
  const monitorDone = monitor();
  const tSend = await depositPhase(coins, recipients);
  const mintsDone = await mintPhase(tSend);
  let burnsDone = null;
  if (opts.burns > 0 && mintsDone && deposits.every((d) => d.mint)) {
    try {
      burnsDone = await burnPhase(recipients);
    } catch (e) {
      say("burn", `FAILED: ${e.message}`);
      summary.burn_error = e.message;
      burnsDone = false;
    }
  }
  stopMonitor = true;
  await monitorDone;
  const r = report(mintsDone, burnsDone);
  failed = r.failed;
  summary.validators = await snapshotValidators();
  if (r.missing.length) {
    await explainMissing(r.missing);
    for (const v of devnet.validators) {
      const m = summary.validators[v.name];
      console.log(`  ${v.name}: ${m.error ? `metrics: ${m.error}` : gaugeBrief(m)}`);
    }
  }
  if (failed) summary.error = "missing, duplicate or wrong mints/payouts, or a timeout";
} catch (e) {
  failed = true;
  stopMonitor = true;
  summary.error = e.message;
  console.error(`load.sh: ${e.message}`);
}
summary.ok = !failed;
try {
  writeSummary();
} catch (e) {
  console.error(`load.sh: cannot write ${opts.json}: ${e.message}`);
  failed = true;
}
if (failed) {
  console.error(`load.sh: FAILED after ${secs()} s${opts.json ? `; summary in ${opts.json}` : ""}; validator logs in ${devnetDir()}/logs`);
  process.exit(1);
}
console.log(`load.sh: OK after ${secs()} s${opts.json ? `; summary in ${opts.json}` : ""}`);
