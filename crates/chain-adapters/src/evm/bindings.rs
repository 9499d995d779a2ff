//! The bridge contract's interface, as compiled from `contracts/` (see
//! `scripts/contracts/build.sh`). The Solidity sources must match these signatures;
//! `tests/tests/bridge_contract.rs` checks every selector against the compiled ABI.

alloy::sol! {
    /// Wrapped BTC: a standard ERC-20 with 8 decimals (1 unit = 1 satoshi), minted and
    /// burned only by its bridge.
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    interface IWrappedBTC {
        event Transfer(address indexed from, address indexed to, uint256 value);
        event Approval(address indexed owner, address indexed spender, uint256 value);
        function name() external view returns (string memory);
        function symbol() external view returns (string memory);
        function decimals() external view returns (uint8);
        function totalSupply() external view returns (uint256);
        function balanceOf(address account) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function approve(address spender, uint256 value) external returns (bool);
        function allowance(address owner, address spender) external view returns (uint256);
        function transferFrom(address from, address to, uint256 value) external returns (bool);
        function bridge() external view returns (address);
        error NotBridge();
        error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed);
    }

    /// The bridge: mints on a FROST(secp256k1, SHA-256) signature by the group key,
    /// burns towards Bitcoin or another chain.
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    interface IBridge {
        /// One mint of a batch (`mintBatch`, `mintWithProof`).
        struct MintLeaf {
            bytes32 eventId;
            address recipient;
            uint64 amountSats;
        }

        event Minted(bytes32 indexed eventId, address indexed recipient, uint64 amountSats);
        event BatchAccepted(bytes32 indexed root);
        event BurnToBitcoin(uint64 indexed nonce, address indexed from, uint64 amountSats, bytes btcScriptPubKey);
        event BurnToChain(uint64 indexed nonce, address indexed from, uint64 destChainId, address recipient, uint64 amountSats);
        event KeyRotated(uint256 px, uint256 py, uint64 rotationNonce);
        event Paused(address guardian);
        event Unpaused(address guardian);
        event RotationApproved(uint256 px, uint256 py, uint64 rotationNonce);
        event KnownChainSet(uint64 indexed chainId, bool enabled, uint64 chainNonce);

        error NotGuardian();
        error NotDeployer();
        error KeyAlreadySet();
        error KeyNotSet();
        error BridgePaused();
        error AlreadyConsumed(bytes32 eventId);
        error InvalidSignature();
        error InvalidKey();
        error InvalidAmount();
        error InvalidScript();
        error InvalidRecipient();
        error InvalidChain();
        error AmountBelowMinimum(uint64 minimum);
        error UnknownChain(uint64 chainId);
        error RotationNotApproved();
        error UnknownRoot(bytes32 root);
        error InvalidProof(bytes32 eventId);
        error LengthMismatch();

        function token() external view returns (address);
        function guardian() external view returns (address);
        function paused() external view returns (bool);
        function groupKey() external view returns (uint256 px, uint256 py);
        function burnNonce() external view returns (uint64);
        function rotationNonce() external view returns (uint64);
        function consumed(bytes32 eventId) external view returns (bool);
        /// The validators' flat peg-out fee in satoshis, fixed at deployment.
        function pegOutFee() external view returns (uint64);
        /// The smallest `burnToBitcoin` amount towards a script: peg-out fee plus the dust
        /// limit of its output type (reverts `InvalidScript` on a non-standard script).
        function minBurnToBitcoin(bytes calldata btcScriptPubKey) external view returns (uint64);
        function knownChain(uint64 chainId) external view returns (bool);
        function chainNonce() external view returns (uint64);
        function rotationApproved(uint256 px, uint256 py) external view returns (bool);
        function acceptedRoot(bytes32 root) external view returns (bool);

        function setInitialKey(uint256 px, uint256 py) external;
        function mint(bytes32 eventId, address recipient, uint64 amountSats, uint256 rx, uint256 ry, uint256 z) external;
        /// Batched mints: one signature on `batchMessage(root)`, a Merkle proof per leaf.
        function acceptBatch(bytes32 root, uint256 rx, uint256 ry, uint256 z) external;
        function mintBatch(bytes32 root, uint256 rx, uint256 ry, uint256 z, MintLeaf[] calldata leaves, bytes32[][] calldata proofs) external returns (uint256 minted);
        function mintWithProof(bytes32 root, MintLeaf calldata leaf, bytes32[] calldata proof) external;
        function rotateKey(uint256 newPx, uint256 newPy, uint256 rx, uint256 ry, uint256 z) external;
        function approveRotation(uint256 px, uint256 py) external;
        function setKnownChain(uint64 chainId, bool enabled, uint256 rx, uint256 ry, uint256 z) external;
        function burnToBitcoin(uint64 amountSats, bytes calldata btcScriptPubKey) external returns (uint64 nonce);
        function burnToChain(uint64 destChainId, address recipient, uint64 amountSats) external returns (uint64 nonce);
        function pause() external;
        function unpause() external;

        /// View helpers: the exact 32-byte messages the group key signs.
        function mintMessage(bytes32 eventId, address recipient, uint64 amountSats) external view returns (bytes32);
        function rotateMessage(uint256 newPx, uint256 newPy) external view returns (bytes32);
        function knownChainMessage(uint64 chainId, bool enabled) external view returns (bytes32);
        function batchMessage(bytes32 root) external view returns (bytes32);
        function mintLeaf(bytes32 eventId, address recipient, uint64 amountSats) external pure returns (bytes32);
        /// Pure verification, for gas measurement and off-chain checks.
        function verify(bytes32 message, uint256 px, uint256 py, uint256 rx, uint256 ry, uint256 z) external view returns (bool);
    }
}
