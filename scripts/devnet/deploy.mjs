// Deploys the bridge contracts on every devnet anvil chain (from anvil's unlocked dev
// account 0, which is also the guardian) and writes .devnet/devnet.json.
// Inputs come from up.sh through DEVNET_* environment variables.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { call, root, rpc, selector, waitFor } from "./lib.mjs";

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`deploy.mjs: ${k} is not set (run scripts/devnet/up.sh)`);
  return v;
};

const bytecode = readFileSync(join(root, "contracts/out/Bridge.bin"), "utf8").trim();
const names = env("DEVNET_EVM_NAMES").split(" ");
const chainIds = env("DEVNET_EVM_CHAIN_IDS").split(" ").map(Number);
const urls = env("DEVNET_EVM_URLS").split(" ");

const evm = [];
for (let i = 0; i < names.length; i++) {
  const url = urls[i];
  await waitFor(`anvil ${names[i]} at ${url}`, () => rpc(url, "eth_chainId"));
  const [deployer] = await rpc(url, "eth_accounts");
  const guardian = deployer.slice(2).toLowerCase().padStart(64, "0");
  const tx = await rpc(url, "eth_sendTransaction", [{ from: deployer, data: "0x" + bytecode + guardian, gas: "0x1c9c380" }]);
  const receipt = await waitFor(`deployment on ${names[i]}`, () => rpc(url, "eth_getTransactionReceipt", [tx]));
  if (receipt.status !== "0x1") throw new Error(`Bridge deployment reverted on ${names[i]}`);
  const bridge = receipt.contractAddress;
  const token = "0x" + (await call(url, bridge, selector("token()"))).slice(-40);
  console.log(`  ${names[i]}: bridge ${bridge}, token ${token}`);
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
