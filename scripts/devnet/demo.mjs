// The devnet round trip, on every EVM chain at once (see demo.sh for the options):
//   1. a BTC deposit to the vault with the memo "BTCFI"|01|chain id|recipient;
//   2. wait until the recipient's wrapped BTC rose by exactly the deposit (one Minted
//      event for the deposit's event id, with this recipient and amount);
//   3. burnToBitcoin of that amount to a fresh address of the bitcoind wallet "demo";
//   4. wait until a block holds a payment of exactly amount - peg_out_fee to it.
// Prints every step with elapsed times; exits 1 on any mismatch or timeout; --json FILE
// writes a machine-readable summary (also on failure, with what was reached).
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
  fatal,
  loadDevnet,
  memo,
  Minted,
  rpc,
  sats,
  selector,
  sendTx,
  sleep,
  topic,
  waitFor,
  word,
  wordAt,
} from "./lib.mjs";

// ---------------------------------------------------------------- options

const usage = `usage: demo.sh [--json FILE] [--timeout SECS] [--chains NAME,...] [--amounts SATS,...]
  --json FILE       write a summary (per chain: deposit, mint, burn, payout, timings)
  --timeout SECS    longest wait for each step: mint, payout (default 300)
  --chains A,B      only these chains (default: every chain in devnet.json)
  --amounts S,...   deposit amounts in sats, one per chain (default 1000000, 2000000, ...)
  --recipient-index N  anvil dev account that receives and burns (default 9, or
                    validators + 1 when there are more than 8 validators)
The devnet comes from $BTCFI_DEVNET_DIR/devnet.json (default <repo>/.devnet).`;
const opts = { json: null, timeout: 300, chains: null, amounts: null, recipientIndex: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const [k, inline] = argv[i].split(/=(.*)/s);
  const val = () => {
    const v = inline ?? argv[++i];
    if (v === undefined) throw new Error(`${k} needs a value\n${usage}`);
    return v;
  };
  if (k === "--json") opts.json = val();
  else if (k === "--timeout") opts.timeout = Number(val());
  else if (k === "--chains") opts.chains = val().split(",").filter(Boolean);
  else if (k === "--amounts") opts.amounts = val().split(",").map(Number);
  else if (k === "--recipient-index") opts.recipientIndex = Number(val());
  else if (k === "-h" || k === "--help") {
    console.log(usage);
    process.exit(0);
  } else {
    console.error(`demo.sh: unknown argument ${argv[i]}\n${usage}`);
    process.exit(2);
  }
}
if (!(opts.timeout > 0)) throw new Error("--timeout must be a positive number of seconds");

// ---------------------------------------------------------------- state

const t0 = Date.now();
const secs = (from = t0) => Math.round((Date.now() - from) / 100) / 10;
const stamp = () => `+${secs().toFixed(1).padStart(6)}s`;
const say = (who, msg) => console.log(`[${stamp()}] ${who.padEnd(9)} ${msg}`);

const summary = { ok: false, error: null, devnet_dir: devnetDir(), started_at: new Date(t0).toISOString(), chains: [] };
function writeSummary() {
  summary.elapsed_secs = secs();
  if (opts.json) writeFileSync(opts.json, JSON.stringify(summary, null, 2) + "\n");
}

const devnet = loadDevnet();
const B = devnet.bitcoin;
const auth = [B.rpc_user, B.rpc_password];
const bitcoind = (method, params = [], wallet = null) =>
  rpc(wallet ? `${B.rpc_url}/wallet/${wallet}` : B.rpc_url, method, params, auth);
const fundingWallet = B.funding_wallet || "miner";
const pegOutFee = Number(B.peg_out_fee ?? 2000);
summary.peg_out_fee = pegOutFee;
summary.vault_address = B.vault_address;


// Wallet calls that pick coins run one at a time (two fundings must not pick the same coin).
let walletLock = Promise.resolve();
const withWallet = (f) => {
  const run = walletLock.then(f, f);
  walletLock = run.catch(() => {});
  return run;
};

// ---------------------------------------------------------------- preflight

async function preflight() {
  if (!B.vault_address) throw new Error("devnet.json has no bitcoin.vault_address: did up.sh finish (DKG)?");
  if (!devnet.validators?.length) throw new Error("devnet.json lists no validators: did up.sh finish?");
  for (const v of devnet.validators) {
    const r = await fetch(v.api_url + "/ready", { signal: AbortSignal.timeout(5000) }).catch((e) => ({ ok: false, statusText: e.message }));
    if (!r.ok) throw new Error(`validator ${v.name} is not ready (${v.api_url}/ready: ${r.status ?? ""} ${r.statusText}); is the devnet up?`);
  }
  const wallets = await bitcoind("listwallets");
  if (!wallets.includes("demo")) {
    await bitcoind("loadwallet", ["demo"]).catch(() => bitcoind("createwallet", ["demo"]));
  }
  const bal = sats(await bitcoind("getbalance", [], fundingWallet));
  say("bitcoin", `wallet ${fundingWallet} holds ${btc(bal)} BTC; vault ${B.vault_address}; peg-out fee ${pegOutFee} sats`);
}

// ---------------------------------------------------------------- one chain

async function roundTrip(c, amount, recipient) {
  const who = c.name;
  const r = { name: c.name, chain_id: c.chain_id, amount_sats: amount, recipient, expected_payout_sats: amount - pegOutFee };
  summary.chains.push(r);
  const balanceOf = async (block = "latest") =>
    wordAt(await rpc(c.rpc_url, "eth_call", [{ to: c.token_address, data: selector("balanceOf(address)") + addressWord(recipient) }, block]), 0);
  const hex = (n) => "0x" + n.toString(16);
  const totalSupply = async () => wordAt(await call(c.rpc_url, c.token_address, selector("totalSupply()")), 0);
  const groupKey = await call(c.rpc_url, c.bridge_address, selector("groupKey()"));
  if (wordAt(groupKey, 0) === 0n) throw new Error(`${c.name}: the bridge has no group key (setInitialKey was not called; rerun up.sh)`);

  // 1. The deposit.
  r.balance_before = Number(await balanceOf());
  r.total_supply_before = Number(await totalSupply());
  const m = memo(c.chain_id, recipient);
  const tDeposit = Date.now();
  const dep = await withWallet(async () => {
    const raw = await bitcoind("createrawtransaction", [[], [{ [B.vault_address]: btc(amount) }, { data: m }]]);
    const funded = await bitcoind("fundrawtransaction", [raw, { lockUnspents: true }], fundingWallet);
    const signed = await bitcoind("signrawtransactionwithwallet", [funded.hex], fundingWallet);
    if (!signed.complete) throw new Error(`${c.name}: the wallet ${fundingWallet} could not sign the deposit`);
    const decoded = await bitcoind("decoderawtransaction", [signed.hex]);
    const out = decoded.vout.find((o) => o.scriptPubKey.address === B.vault_address && sats(o.value) === amount);
    if (!out) throw new Error(`${c.name}: the funded deposit has no output of ${amount} sats to the vault`);
    const txid = await bitcoind("sendrawtransaction", [signed.hex]);
    return { txid, vout: out.n, fee_sats: sats(funded.fee) };
  });
  r.deposit = {
    txid: dep.txid,
    vout: dep.vout,
    outpoint: `${dep.txid}:${dep.vout}`,
    event_id: `0:${dep.txid}:${dep.vout}`,
    contract_event_id: contractEventId(dep.txid, dep.vout),
    memo: m,
    at_secs: secs(),
  };
  say(who, `deposit ${btc(amount)} BTC to the vault for ${recipient} on chain ${c.chain_id}: ${dep.txid}:${dep.vout}`);

  // 2. Wait for the mint, showing the deposit's way through the validators.
  const v0 = devnet.validators[0];
  let lastStatus = null;
  let lastConf = -1;
  const minted = await waitFor(
    () => `the mint of ${amount} sats to ${recipient} on ${c.name} (deposit ${r.deposit.outpoint}, last status on ${v0.name}: ${lastStatus ?? "none"})`,
    async () => {
      const conf = (await bitcoind("gettransaction", [dep.txid], fundingWallet)).confirmations;
      if (conf !== lastConf && conf <= B.confirmations) {
        lastConf = conf;
        say(who, `deposit has ${conf} of ${B.confirmations} confirmations`);
      }
      const d = await api(v0, `/v1/deposits/${r.deposit.outpoint}`).catch(() => null);
      if (d?.status && d.status !== lastStatus) {
        lastStatus = d.status;
        r.deposit_status = d.status;
        const extra = d.status === "observed" && d.votes !== undefined ? ` (${d.votes} of ${d.quorum} votes)` : "";
        say(who, `deposit status on ${v0.name}: ${d.status}${extra}${d.gate ? `, waiting for ${d.gate}` : ""}`);
        if (d.contract_event_id && d.contract_event_id !== r.deposit.contract_event_id) {
          throw fatal(`${c.name}: ${v0.name} names the deposit ${d.contract_event_id} on chain, demo computed ${r.deposit.contract_event_id}`);
        }
        if (d.status === "rejected" || d.status === "reorged") throw fatal(`${c.name}: the deposit was ${d.status}: ${JSON.stringify(d)}`);
      }
      // The bridge's Minted event for this deposit's id (other mints to the same
      // recipient, e.g. of an earlier run's deposits, may land meanwhile).
      const logs = await rpc(c.rpc_url, "eth_getLogs", [
        { address: c.bridge_address, fromBlock: "0x0", toBlock: "latest", topics: [Minted, r.deposit.contract_event_id] },
      ]);
      if (logs.length > 1) throw fatal(`${c.name}: ${logs.length} Minted events for the deposit's event id, expected 1`);
      return logs[0] ?? null;
    },
    opts.timeout * 1000,
    1000,
  );
  const log = minted;
  const mintRecipient = "0x" + log.topics[2].slice(-40);
  const mintAmount = Number(wordAt(log.data, 0));
  if (mintRecipient.toLowerCase() !== recipient.toLowerCase() || mintAmount !== amount) {
    throw new Error(`${c.name}: Minted(${mintRecipient}, ${mintAmount}) does not match the deposit (${recipient}, ${amount})`);
  }
  // The recipient's balance rose by exactly the amount in the mint's block (plus other
  // Minted events to the recipient in that block, if any).
  const mintBlock = BigInt(log.blockNumber);
  const sameBlock = await rpc(c.rpc_url, "eth_getLogs", [
    { address: c.bridge_address, fromBlock: hex(mintBlock), toBlock: hex(mintBlock), topics: [Minted, null, "0x" + addressWord(recipient)] },
  ]);
  const others = sameBlock
    .filter((l) => !(l.transactionHash === log.transactionHash && l.logIndex === log.logIndex))
    .reduce((sum, l) => sum + wordAt(l.data, 0), 0n);
  const [balBefore, balAfter] = [await balanceOf(hex(mintBlock - 1n)), await balanceOf(hex(mintBlock))];
  if (balAfter - balBefore !== BigInt(amount) + others) {
    throw new Error(`${c.name}: the recipient's balance went from ${balBefore} to ${balAfter} in the mint's block ${mintBlock}, expected +${amount}`);
  }
  const mintTx = await rpc(c.rpc_url, "eth_getTransactionByHash", [log.transactionHash]);
  r.mint = {
    observed: true,
    tx_hash: log.transactionHash,
    block_number: Number(log.blockNumber),
    relayer: mintTx?.from ?? null,
    event_id: log.topics[1],
    recipient: mintRecipient,
    amount_sats: mintAmount,
    balance_before: Number(balBefore),
    balance_after: Number(balAfter),
    secs_after_deposit: secs(tDeposit),
  };
  say(who, `minted ${mintAmount} sats to ${recipient} in ${log.transactionHash} (relayer ${r.mint.relayer}), ${r.mint.secs_after_deposit} s after the deposit`);

  // 3. Burn it back to a fresh Bitcoin address.
  const address = await bitcoind("getnewaddress", [`demo-${c.name}`, "bech32"], "demo");
  const spk = (await bitcoind("getaddressinfo", [address], "demo")).scriptPubKey;
  const tBurn = Date.now();
  const receipt = await sendTx(
    c.rpc_url,
    recipient,
    c.bridge_address,
    selector("burnToBitcoin(uint64,bytes)") + word(amount) + word(64) + bytesTail(spk),
    `burnToBitcoin on ${c.name}`,
  );
  const burnLog = receipt.logs.find((l) => l.address.toLowerCase() === c.bridge_address.toLowerCase() && l.topics[0] === BurnToBitcoin);
  if (!burnLog) throw new Error(`${c.name}: burnToBitcoin emitted no BurnToBitcoin event (tx ${receipt.transactionHash})`);
  const Transfer = topic("Transfer(address,address,uint256)");
  const burned = receipt.logs.filter((l) => l.address.toLowerCase() === c.token_address.toLowerCase() && l.topics[0] === Transfer);
  if (burned.length !== 1 || "0x" + burned[0].topics[1].slice(-40) !== recipient.toLowerCase() || BigInt(burned[0].topics[2]) !== 0n || wordAt(burned[0].data, 0) !== BigInt(amount)) {
    throw new Error(`${c.name}: the burn tx ${receipt.transactionHash} did not burn exactly ${amount} of the recipient's wrapped BTC`);
  }
  r.burn = {
    tx_hash: receipt.transactionHash,
    block_number: Number(receipt.blockNumber),
    nonce: Number(BigInt(burnLog.topics[1])),
    event_id: `${c.chain_id}:${receipt.transactionHash.slice(2)}:${Number(burnLog.logIndex)}`,
    amount_sats: amount,
    address,
    script_pubkey: spk,
    at_secs: secs(),
  };
  say(who, `burned ${amount} sats to ${address} (burn nonce ${r.burn.nonce}, tx ${receipt.transactionHash})`);

  // 4. Wait for the payout in a block.
  const expect = amount - pegOutFee;
  let lastBurnStatus = null;
  let seenMempool = false;
  const payout = await waitFor(
    () => `a payment of ${expect} sats to ${address} in a block (burn ${r.burn.event_id}, last status on ${v0.name}: ${lastBurnStatus ?? "none"})`,
    async () => {
      const a = await api(v0, `/v1/attestations/${r.burn.event_id}`).catch(() => null);
      if (a?.status && a.status !== lastBurnStatus) {
        lastBurnStatus = a.status;
        r.burn_status = a.status;
        say(who, `burn status on ${v0.name}: ${a.status}`);
      }
      if (!seenMempool) {
        const pending = await bitcoind("listreceivedbyaddress", [0, false, true, address], "demo");
        if (pending.length && sats(pending[0].amount) > 0) {
          seenMempool = true;
          say(who, `payout seen unconfirmed: ${pending[0].txids.join(", ")} (${sats(pending[0].amount)} sats)`);
        }
      }
      const got = await bitcoind("listreceivedbyaddress", [1, false, true, address], "demo");
      if (!got.length || sats(got[0].amount) === 0) return null;
      const paid = sats(got[0].amount);
      if (paid !== expect || got[0].txids.length !== 1) {
        throw fatal(`${c.name}: ${address} received ${paid} sats in ${got[0].txids.length} tx(s) ${got[0].txids.join(", ")}, expected one payment of ${expect}`);
      }
      return got[0].txids[0];
    },
    opts.timeout * 1000,
    1000,
  );
  const tx = await bitcoind("gettransaction", [payout], "demo");
  const detail = tx.details.find((d) => d.address === address && d.category === "receive");
  r.payout = {
    txid: payout,
    vout: detail?.vout ?? null,
    amount_sats: sats(detail?.amount ?? 0),
    expected_sats: expect,
    blockhash: tx.blockhash,
    confirmations: tx.confirmations,
    secs_after_burn: secs(tBurn),
  };
  say(who, `paid ${r.payout.amount_sats} sats (${amount} - fee ${pegOutFee}) to ${address} in ${payout}:${r.payout.vout}, block ${tx.blockhash.slice(0, 16)}…, ${r.payout.secs_after_burn} s after the burn`);
  r.ok = true;
}

// ---------------------------------------------------------------- main

let failed = false;
try {
  await preflight();
  const chains = opts.chains ? devnet.evm.filter((c) => opts.chains.includes(c.name)) : devnet.evm;
  if (opts.chains && chains.length !== opts.chains.length) throw new Error(`unknown chain in --chains ${opts.chains}: devnet has ${devnet.evm.map((c) => c.name)}`);
  const amounts = opts.amounts ?? chains.map((_, i) => 1_000_000 * (i + 1));
  if (amounts.length !== chains.length || amounts.some((a) => !Number.isInteger(a) || a <= pegOutFee)) {
    throw new Error(`--amounts: one integer above the peg-out fee (${pegOutFee}) per chain`);
  }
  const accounts = await rpc(chains[0].rpc_url, "eth_accounts");
  const idx = opts.recipientIndex ?? Math.max(9, devnet.validators.length + 1);
  const recipient = accounts[idx];
  if (!recipient) throw new Error(`anvil has no dev account ${idx}`);
  summary.recipient = recipient;
  say("demo", `${chains.length} round trips (BTC → wrapped BTC → BTC) for ${recipient} (anvil account ${idx}); up to ${opts.timeout} s per wait`);
  const results = await Promise.allSettled(chains.map((c, i) => roundTrip(c, amounts[i], recipient)));
  results.forEach((res, i) => {
    if (res.status === "rejected") {
      failed = true;
      const r = summary.chains.find((x) => x.name === chains[i].name);
      if (r) r.error = res.reason.message;
      say(chains[i].name, `FAILED: ${res.reason.message}`);
    }
  });
  if (failed) summary.error = "one or more round trips failed";
} catch (e) {
  failed = true;
  summary.error = e.message;
  console.error(`demo.sh: ${e.message}`);
}
summary.ok = !failed;
writeSummary();
if (failed) {
  console.error(`demo.sh: FAILED after ${secs()} s${opts.json ? `; summary in ${opts.json}` : ""}; validator logs in ${devnetDir()}/logs`);
  process.exit(1);
}
say("demo", `all ${summary.chains.length} round trips done in ${secs()} s`);
for (const r of summary.chains) {
  console.log(
    `  ${r.name.padEnd(9)} deposit ${r.amount_sats} → minted ${r.mint.amount_sats} (${r.mint.secs_after_deposit} s) → burned ${r.burn.amount_sats} → paid ${r.payout.amount_sats} (${r.payout.secs_after_burn} s)`,
  );
}
