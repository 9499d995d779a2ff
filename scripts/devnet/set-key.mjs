// Registers the validators' EVM group key (the DKG's x, y) in every devnet bridge:
// `setInitialKey(px, py)` from the bridge's deployer (anvil's unlocked account 0), then
// reads `groupKey()` back and checks it. Idempotent: a bridge that already holds this
// key is left alone; one that holds another key is an error (the deployer can set the
// first key only once; afterwards only a rotation signed by the current key changes it).
//
//   node scripts/devnet/set-key.mjs 0x<x> 0x<y>     (devnet from $BTCFI_DEVNET_DIR)
import { call, loadDevnet, selector, sendTx, word, wordAt } from "./lib.mjs";

const [x, y] = process.argv.slice(2);
if (!/^0x[0-9a-fA-F]{1,64}$/.test(x || "") || !/^0x[0-9a-fA-F]{1,64}$/.test(y || "")) {
  console.error("usage: set-key.mjs 0x<x> 0x<y>");
  process.exit(2);
}
const want = [BigInt(x), BigInt(y)];
const hex = (n) => "0x" + n.toString(16).padStart(64, "0");

const devnet = loadDevnet();
for (const c of devnet.evm) {
  const groupKey = async () => {
    const r = await call(c.rpc_url, c.bridge_address, selector("groupKey()"));
    return [wordAt(r, 0), wordAt(r, 1)];
  };
  const before = await groupKey();
  if (before[0] === want[0] && before[1] === want[1]) {
    console.log(`  ${c.name}: group key already set`);
    continue;
  }
  if (before[0] !== 0n) {
    throw new Error(`${c.name}: the bridge ${c.bridge_address} already holds another group key (${hex(before[0])}); redeploy with up.sh`);
  }
  const deployer = "0x" + (await call(c.rpc_url, c.bridge_address, selector("deployer()"))).slice(-40);
  const receipt = await sendTx(
    c.rpc_url,
    deployer,
    c.bridge_address,
    selector("setInitialKey(uint256,uint256)") + word(want[0]) + word(want[1]),
    `setInitialKey on ${c.name}`,
  );
  const after = await groupKey();
  if (after[0] !== want[0] || after[1] !== want[1]) {
    throw new Error(`${c.name}: groupKey() returns (${hex(after[0])}, ${hex(after[1])}) after setInitialKey, not the DKG key`);
  }
  console.log(`  ${c.name}: group key set (tx ${receipt.transactionHash}, block ${Number(receipt.blockNumber)})`);
}
