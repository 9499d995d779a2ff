// Shared helpers of the devnet scripts (deploy.mjs, set-key.mjs, demo.mjs): JSON-RPC
// over fetch (EVM and bitcoind), polling with a deadline, and the little ABI encoding
// the bridge needs. No ethers: selectors come from js-sha3, which ships with the npm
// `solc` package that scripts/devnet/install-deps.sh installs into $BTCFI_DEPS.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

export const root = new URL("../..", import.meta.url).pathname;

/// The devnet directory: $BTCFI_DEVNET_DIR, else <repo>/.devnet (as up.sh and down.sh).
export const devnetDir = () => process.env.BTCFI_DEVNET_DIR || join(root, ".devnet");

export const loadDevnet = (dir = devnetDir()) => {
  const file = join(dir, "devnet.json");
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`cannot read ${file} (${e.code || e.message}): is the devnet up? run scripts/devnet/up.sh`);
  }
};

const deps = process.env.BTCFI_DEPS || join(root, ".deps");
const requireDeps = createRequire(join(deps, "npm", "node_modules", "solc", "package.json"));
export const { keccak256 } = requireDeps("js-sha3");
export const selector = (sig) => "0x" + keccak256(sig).slice(0, 8);
/// keccak256 of an event signature: the log's topic 0.
export const topic = (sig) => "0x" + keccak256(sig);

let nextId = 1;
/// One JSON-RPC call; `auth` = [user, password] for bitcoind. Throws with the method,
/// the URL and the node's error.
export async function rpc(url, method, params = [], auth = null) {
  const headers = { "content-type": "application/json" };
  if (auth) headers.authorization = "Basic " + Buffer.from(`${auth[0]}:${auth[1]}`).toString("base64");
  const res = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({ jsonrpc: auth ? "1.0" : "2.0", id: nextId++, method, params }),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (_) {
    throw new Error(`${method} on ${url}: HTTP ${res.status} ${text.slice(0, 200)}`);
  }
  if (body.error) throw new Error(`${method} on ${url}: ${JSON.stringify(body.error)}`);
  return body.result;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Polls `f` until it returns a truthy value; errors thrown by `f` count as "not yet",
/// except ones marked `fatal`. Fails after `ms` with the last error seen. `what` may be
/// a function, called for the message at the deadline.
export async function waitFor(what, f, ms = 30000, every = 100) {
  const end = Date.now() + ms;
  let last = null;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    if (Date.now() > end) {
      const w = typeof what === "function" ? what() : what;
      throw new Error(`timed out after ${Math.round(ms / 1000)} s waiting for ${w}${last ? ` (last error: ${last.message})` : ""}`);
    }
    await sleep(every);
  }
}

export const fatal = (msg) => Object.assign(new Error(msg), { fatal: true });

// ---------------------------------------------------------------- ABI words

const strip = (h) => (h.startsWith("0x") ? h.slice(2) : h);
/// A uint (number, bigint or 0x-hex) as one 32-byte word (hex, no 0x).
export const word = (v) => {
  const n = typeof v === "string" ? BigInt(v.startsWith("0x") ? v : "0x" + v) : BigInt(v);
  if (n < 0n || n >= 1n << 256n) throw new Error(`${v} does not fit a uint256`);
  return n.toString(16).padStart(64, "0");
};
export const addressWord = (a) => strip(a).toLowerCase().padStart(64, "0");
/// Dynamic `bytes` tail: length word plus the data right-padded to whole words.
export const bytesTail = (hex) => {
  const h = strip(hex);
  return word(h.length / 2) + h.padEnd(Math.ceil(h.length / 64) * 64, "0");
};
/// The i-th 32-byte word of ABI-encoded return data, as a BigInt.
export const wordAt = (data, i) => BigInt("0x" + (strip(data).slice(64 * i, 64 * (i + 1)) || "0"));

// ---------------------------------------------------------------- EVM

// Anvil numbers an unlocked account's transactions as they arrive: two sent at once from
// one account can get the same nonce ("replacement transaction underpriced"; a burst of
// 2,000 burns lost 76 that way). Sends from one account go one at a time; their
// receipts are awaited in parallel.
const sending = new Map();
function oneAtATime(url, from, f) {
  const key = `${url}|${from.toLowerCase()}`;
  const run = (sending.get(key) ?? Promise.resolve()).then(f, f);
  sending.set(key, run.catch(() => {}));
  return run;
}

/// Sends `data` to `to` from an account anvil has unlocked and waits for the receipt;
/// throws if it reverted.
export async function sendTx(url, from, to, data, what) {
  const hash = await oneAtATime(url, from, () => rpc(url, "eth_sendTransaction", [{ from, to, data, gas: "0x1e8480" }]));
  const receipt = await waitFor(`${what} (${hash}) to be mined`, () => rpc(url, "eth_getTransactionReceipt", [hash]), 60000);
  if (receipt.status !== "0x1") throw new Error(`${what} reverted: tx ${hash} on ${url}`);
  return receipt;
}

export const call = (url, to, data) => rpc(url, "eth_call", [{ to, data }, "latest"]);

// ---------------------------------------------------------------- amounts

/// Satoshis (integer) as a BTC decimal string for bitcoind.
export const btc = (sats) => {
  const s = BigInt(sats);
  return `${s / 100000000n}.${(s % 100000000n).toString().padStart(8, "0")}`;
};
/// A BTC amount as bitcoind prints it (a JSON number) in satoshis.
export const sats = (amount) => Math.round(Number(amount) * 1e8);

/// The id the bridge records as consumed for a deposit: sha256("BTCFI-EVENT-v1" ||
/// chain id 0 (u64 BE) || txid (display order) || vout (u32 BE)); see EventId::contract_id.
export function contractEventId(txid, vout) {
  const b = Buffer.alloc(8 + 32 + 4);
  Buffer.from(txid, "hex").copy(b, 8);
  b.writeUInt32BE(vout, 40);
  return "0x" + createHash("sha256").update("BTCFI-EVENT-v1").update(b).digest("hex");
}

/// The deposit memo (OP_RETURN data, hex): "BTCFI" | 01 | chain id u64 BE | recipient.
export const memo = (chainId, recipient) =>
  Buffer.from("BTCFI").toString("hex") + "01" + BigInt(chainId).toString(16).padStart(16, "0") + recipient.slice(2).toLowerCase();

/// The bridge events the scripts follow (log topic 0).
export const Minted = topic("Minted(bytes32,address,uint64)");
export const BurnToBitcoin = topic("BurnToBitcoin(uint64,address,uint64,bytes)");

/// GET `path` on validator `v`'s API: its JSON, or { status_code, body } if it is not JSON.
export async function api(v, path) {
  const res = await fetch(v.api_url + path, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch (_) {
    return { status_code: res.status, body: text };
  }
}
