// Deploys the bridge contracts on every devnet anvil chain (from anvil's unlocked dev
// account 0, which is also the guardian) and writes .devnet/devnet.json.
// Inputs come from up.sh through DEVNET_* environment variables.
//
// Constructor: Bridge(guardian, pegOutFee, knownChains) with pegOutFee the validators'
// `bitcoin.peg_out_fee` (DEVNET_PEG_OUT_FEE, the same value up.sh writes into every
// validator's config) and knownChains every other devnet chain, so that burnToChain
// works between any two of them. Both are read back and checked after deployment.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { addressWord, call, root, rpc, selector, waitFor, word, wordAt } from "./lib.mjs";

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`deploy.mjs: ${k} is not set (run scripts/devnet/up.sh)`);
  return v;
};

const bytecode = readFileSync(join(root, "contracts/out/Bridge.bin"), "utf8").trim();
const names = env("DEVNET_EVM_NAMES").split(" ");
const chainIds = env("DEVNET_EVM_CHAIN_IDS").split(" ").map(Number);
const urls = env("DEVNET_EVM_URLS").split(" ");
const pegOutFee = BigInt(env("DEVNET_PEG_OUT_FEE"));

/// ABI encoding of (address guardian, uint64 pegOutFee, uint64[] knownChains).
const constructorArgs = (guardian, fee, chains) =>
  addressWord(guardian) + word(fee) + word(0x60) + word(chains.length) + chains.map(word).join("");

const evm = [];
for (let i = 0; i < names.length; i++) {
  const url = urls[i];
  await waitFor(`anvil ${names[i]} at ${url}`, () => rpc(url, "eth_chainId"));
  const [deployer] = await rpc(url, "eth_accounts");
  const known = chainIds.filter((id) => id !== chainIds[i]);
  const data = "0x" + bytecode + constructorArgs(deployer, pegOutFee, known);
  const tx = await rpc(url, "eth_sendTransaction", [{ from: deployer, data, gas: "0x1c9c380" }]);
  const receipt = await waitFor(`deployment on ${names[i]}`, () => rpc(url, "eth_getTransactionReceipt", [tx]));
  if (receipt.status !== "0x1") throw new Error(`Bridge deployment reverted on ${names[i]}`);
  const bridge = receipt.contractAddress;
  const token = "0x" + (await call(url, bridge, selector("token()"))).slice(-40);
  const fee = wordAt(await call(url, bridge, selector("pegOutFee()")), 0);
  if (fee !== pegOutFee) throw new Error(`${names[i]}: pegOutFee() is ${fee}, not ${pegOutFee}`);
  for (const id of known) {
    const ok = wordAt(await call(url, bridge, selector("knownChain(uint64)") + word(id)), 0);
    if (ok !== 1n) throw new Error(`${names[i]}: knownChain(${id}) is false after deployment`);
  }
  console.log(`  ${names[i]}: bridge ${bridge}, token ${token}, peg-out fee ${fee} sat, known chains ${known.join(" ")}`);
  evm.push({ name: names[i], chain_id: chainIds[i], rpc_url: url, bridge_address: bridge, token_address: token });
}

const devnet = {
  bitcoin: {
    rpc_url: env("DEVNET_BTC_RPC"),
    rpc_user: env("DEVNET_RPC_USER"),
    rpc_password: env("DEVNET_RPC_PASSWORD"),
    // Filled in by up.sh once the validators have run their DKG.
    vault_address: null,
    confirmations: Number(env("DEVNET_CONFIRMATIONS")),
  },
  evm,
  validators: [],
};
writeFileSync(join(env("DEVNET_DIR"), "devnet.json"), JSON.stringify(devnet, null, 2) + "\n");
