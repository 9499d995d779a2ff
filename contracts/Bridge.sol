// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {FROST} from "./FROST.sol";
import {WrappedBTC} from "./WrappedBTC.sol";

/// @title btcfi bridge
/// @notice Mints wrapped BTC on a FROST(secp256k1, SHA-256) signature by the
/// validators' group key, and burns it towards Bitcoin or another EVM chain.
/// @dev The interface is fixed by `crates/chain-adapters/src/evm/bindings.rs`
/// (`IBridge`); the Rust signer (`btcfi_signer::evm`) computes `mintMessage` and
/// `rotateMessage` byte for byte. Every signed message binds a domain tag, the chain
/// id and this contract's address, plus a consumed event id (mint), the rotation
/// nonce (rotation) or the chain-list nonce (known destination chains), so no
/// signature is valid twice or anywhere else.
///
/// Roles: the deployer sets the first group key (once) and, in the constructor, the
/// peg-out fee and the first list of known destination chains; afterwards only the
/// current group key can replace itself or change that list. The guardian can pause
/// minting and burning. Key rotation stays possible while paused (rotating away from
/// a compromised key must be), but only to a key the guardian approved for exactly that
/// rotation: a stolen group key cannot take over a paused bridge.
///
/// Peg-outs: `burnToBitcoin` accepts only the five standard output templates Bitcoin
/// nodes relay (P2PKH, P2SH, P2WPKH, P2WSH, P2TR, exact lengths and opcodes), and only
/// amounts that still leave an output at or above that type's dust limit (Bitcoin
/// Core's default dust relay fee, 3 sat/vB) once the validators keep the flat peg-out
/// fee. Anything else could never be paid, so it is refused before wrapped BTC burns.
contract Bridge {
    bytes32 private constant MINT_TAG = keccak256("BTCFI-MINT-v1");
    bytes32 private constant ROTATE_TAG = keccak256("BTCFI-ROTATE-v1");
    bytes32 private constant CHAIN_TAG = keccak256("BTCFI-CHAIN-v1");
    bytes32 private constant BATCH_TAG = keccak256("BTCFI-MINT-BATCH-v1");
    bytes32 private constant LEAF_TAG = keccak256("BTCFI-MINT-LEAF-v1");
    /// @notice Longest Bitcoin output script the bridge could ever accept (Bitcoin's own
    /// script size limit). The standard templates it does accept are at most 34 bytes.
    uint256 public constant MAX_SCRIPT_LEN = 10_000;
    /// @notice Bitcoin's MAX_MONEY in satoshis: no peg-out fee can be larger.
    uint64 public constant MAX_SATS = 21_000_000 * 100_000_000;

    WrappedBTC public immutable token;
    address public immutable guardian;
    address public immutable deployer;
    /// @notice The flat fee in satoshis the validators keep from each peg-out (their
    /// `bitcoin.peg_out_fee`); the user's Bitcoin output is `amountSats - pegOutFee`.
    uint64 public immutable pegOutFee;

    /// @dev Packed in one slot: the flags and nonces change together on the hot paths.
    bool public paused;
    /// @notice Nonce of the next burn (one counter for both burn kinds, starting at 0).
    uint64 public burnNonce;
    /// @notice Nonce that the next key rotation message must carry.
    uint64 public rotationNonce;
    /// @notice Nonce that the next known-chain update message must carry. Separate from
    /// `rotationNonce`, so that a list update never invalidates a signed rotation.
    uint64 public chainNonce;

    uint256 private _px;
    uint256 private _py;
    /// @dev keccak256(abi.encode(rotationNonce, px, py)) of the rotation the guardian
    /// approved (0: none); binding the nonce makes one approval good for one rotation.
    bytes32 private _approvedRotation;

    /// @notice Event ids that already minted.
    mapping(bytes32 eventId => bool) public consumed;
    /// @notice Destination chains `burnToChain` accepts.
    mapping(uint64 chainId => bool) public knownChain;
    /// @notice Batch roots whose group-key signature this contract verified: each of
    /// their leaves mints with its Merkle proof alone (once, like any event id).
    mapping(bytes32 root => bool) public acceptedRoot;

    /// @notice One mint of a batch: the leaf is `mintLeaf(eventId, recipient, amountSats)`.
    struct MintLeaf {
        bytes32 eventId;
        address recipient;
        uint64 amountSats;
    }

    event Minted(bytes32 indexed eventId, address indexed recipient, uint64 amountSats);
    /// @notice The group key's signature on `batchMessage(root)` was verified; the root's
    /// leaves can mint.
    event BatchAccepted(bytes32 indexed root);
    event BurnToBitcoin(uint64 indexed nonce, address indexed from, uint64 amountSats, bytes btcScriptPubKey);
    event BurnToChain(
        uint64 indexed nonce, address indexed from, uint64 destChainId, address recipient, uint64 amountSats
    );
    /// @notice The group key changed to (px, py); `rotationNonce` is the nonce the
    /// authorising message carried (the contract's `rotationNonce()` is now one more).
    event KeyRotated(uint256 px, uint256 py, uint64 rotationNonce);
    event Paused(address guardian);
    event Unpaused(address guardian);
    /// @notice The guardian approved rotating to (px, py) at rotation nonce `rotationNonce`.
    event RotationApproved(uint256 px, uint256 py, uint64 rotationNonce);
    /// @notice A group-key-signed update made `chainId` known (`enabled`) or unknown;
    /// `chainNonce` is the nonce the authorising message carried. (The constructor's
    /// initial list emits nothing: it is in the deployment transaction.)
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
    /// @notice `burnToBitcoin` of less than `minimum` (peg-out fee plus the dust limit of
    /// the script's output type): the validators could not pay it.
    error AmountBelowMinimum(uint64 minimum);
    /// @notice `burnToChain` towards a chain the bridge does not know.
    error UnknownChain(uint64 chainId);
    /// @notice `rotateKey` while paused to a key the guardian did not approve.
    error RotationNotApproved();
    /// @notice `mintWithProof` under a root that no verified signature accepted.
    error UnknownRoot(bytes32 root);
    /// @notice The proof does not lead from this mint's leaf to the batch root.
    error InvalidProof(bytes32 eventId);
    /// @notice `mintBatch` with a different number of leaves and proofs.
    error LengthMismatch();

    modifier whenNotPaused() {
        if (paused) revert BridgePaused();
        _;
    }

    modifier onlyGuardian() {
        if (msg.sender != guardian) revert NotGuardian();
        _;
    }

    /// @param guardian_ May pause, unpause and approve rotations while paused.
    /// @param pegOutFee_ The validators' flat peg-out fee in satoshis (at most MAX_SATS).
    /// @param knownChains_ The first destination chains of `burnToChain`: neither 0
    /// (Bitcoin) nor this chain. Later changes need a group-key signature.
    constructor(address guardian_, uint64 pegOutFee_, uint64[] memory knownChains_) {
        if (pegOutFee_ > MAX_SATS) revert InvalidAmount();
        guardian = guardian_;
        deployer = msg.sender;
        pegOutFee = pegOutFee_;
        for (uint256 i = 0; i < knownChains_.length; i++) {
            uint64 id = knownChains_[i];
            if (id == 0 || id == block.chainid) revert InvalidChain();
            knownChain[id] = true;
        }
        token = new WrappedBTC(address(this));
    }

    // ---------------------------------------------------------------- key

    /// @notice The current group key; (0, 0) until `setInitialKey`.
    function groupKey() external view returns (uint256 px, uint256 py) {
        return (_px, _py);
    }

    /// @notice Sets the first group key (the output of the validators' first DKG).
    /// Deployer only, once.
    function setInitialKey(uint256 px, uint256 py) external {
        if (msg.sender != deployer) revert NotDeployer();
        // A valid key never has px == 0 (no curve point has x == 0).
        if (_px != 0) revert KeyAlreadySet();
        if (!FROST.isValidPublicKey(px, py)) revert InvalidKey();
        _px = px;
        _py = py;
    }

    /// @notice Replaces the group key, authorised by a signature of the current key on
    /// `rotateMessage(newPx, newPy)`. While paused, also needs the guardian's
    /// `approveRotation(newPx, newPy)` at the current rotation nonce.
    function rotateKey(uint256 newPx, uint256 newPy, uint256 rx, uint256 ry, uint256 z) external {
        uint256 px = _px;
        if (px == 0) revert KeyNotSet();
        if (!FROST.isValidPublicKey(newPx, newPy)) revert InvalidKey();
        uint64 nonce = rotationNonce;
        if (paused && _approvedRotation != _rotationApproval(nonce, newPx, newPy)) revert RotationNotApproved();
        if (!FROST.verify(_rotateMessage(nonce, newPx, newPy), px, _py, rx, ry, z)) revert InvalidSignature();
        _px = newPx;
        _py = newPy;
        rotationNonce = nonce + 1;
        // Any approval was for this nonce or an older one: none can be used again.
        delete _approvedRotation;
        emit KeyRotated(newPx, newPy, nonce);
    }

    /// @notice Guardian only: approves the next rotation (at the current
    /// `rotationNonce`) to (px, py), the one key `rotateKey` accepts while paused. A
    /// later approval replaces it; it expires with the next rotation.
    function approveRotation(uint256 px, uint256 py) external onlyGuardian {
        if (!FROST.isValidPublicKey(px, py)) revert InvalidKey();
        uint64 nonce = rotationNonce;
        _approvedRotation = _rotationApproval(nonce, px, py);
        emit RotationApproved(px, py, nonce);
    }

    /// @notice Whether the guardian approved the next rotation to (px, py).
    function rotationApproved(uint256 px, uint256 py) external view returns (bool) {
        return _approvedRotation == _rotationApproval(rotationNonce, px, py);
    }

    function _rotationApproval(uint64 nonce, uint256 px, uint256 py) private pure returns (bytes32) {
        return keccak256(abi.encode(nonce, px, py));
    }

    // ---------------------------------------------------------------- chains

    /// @notice Makes `chainId` a known (`enabled`) or unknown destination of
    /// `burnToChain`, authorised by a group-key signature on
    /// `knownChainMessage(chainId, enabled)`. While paused, chains can only be disabled
    /// (that only narrows what the bridge does, whoever holds the key).
    function setKnownChain(uint64 chainId, bool enabled, uint256 rx, uint256 ry, uint256 z) external {
        uint256 px = _px;
        if (px == 0) revert KeyNotSet();
        if (enabled && paused) revert BridgePaused();
        if (chainId == 0 || chainId == block.chainid) revert InvalidChain();
        uint64 nonce = chainNonce;
        if (!FROST.verify(_chainMessage(nonce, chainId, enabled), px, _py, rx, ry, z)) revert InvalidSignature();
        knownChain[chainId] = enabled;
        chainNonce = nonce + 1;
        emit KnownChainSet(chainId, enabled, nonce);
    }

    // ---------------------------------------------------------------- mint

    /// @notice Mints `amountSats` to `recipient` for the deposit `eventId`, authorised
    /// by a group-key signature on `mintMessage(eventId, recipient, amountSats)`.
    /// Anyone may submit (relayers); each event id mints at most once.
    function mint(bytes32 eventId, address recipient, uint64 amountSats, uint256 rx, uint256 ry, uint256 z)
        external
        whenNotPaused
    {
        uint256 px = _px;
        if (px == 0) revert KeyNotSet();
        if (recipient == address(0)) revert InvalidRecipient();
        if (amountSats == 0) revert InvalidAmount();
        if (consumed[eventId]) revert AlreadyConsumed(eventId);
        if (!FROST.verify(_mintMessage(eventId, recipient, amountSats), px, _py, rx, ry, z)) {
            revert InvalidSignature();
        }
        consumed[eventId] = true;
        token.bridgeMint(recipient, amountSats);
        emit Minted(eventId, recipient, amountSats);
    }

    // ---------------------------------------------------------------- batched mints

    /// @notice Accepts the batch root `root` on a group-key signature of
    /// `batchMessage(root)`; a root accepted before costs nothing more. Anyone may
    /// submit. After it, each leaf mints with `mintWithProof`.
    function acceptBatch(bytes32 root, uint256 rx, uint256 ry, uint256 z) external whenNotPaused {
        _acceptBatch(root, rx, ry, z);
    }

    /// @notice Mints the leaves of one batch in one transaction: the root's signature is
    /// verified once (skipped if the root was accepted before), then each leaf with its
    /// proof. A leaf whose event id already minted (another batch, a single `mint`, a
    /// relayer ahead of this one) is skipped, not an error, so overlapping batches and
    /// racing relayers are harmless; a leaf with a bad proof reverts the whole call.
    /// @return minted How many leaves minted now.
    function mintBatch(
        bytes32 root,
        uint256 rx,
        uint256 ry,
        uint256 z,
        MintLeaf[] calldata leaves,
        bytes32[][] calldata proofs
    ) external whenNotPaused returns (uint256 minted) {
        if (leaves.length != proofs.length) revert LengthMismatch();
        _acceptBatch(root, rx, ry, z);
        for (uint256 i = 0; i < leaves.length; i++) {
            MintLeaf calldata leaf = leaves[i];
            if (consumed[leaf.eventId]) continue;
            _mintLeaf(root, leaf, proofs[i]);
            minted++;
        }
    }

    /// @notice Mints one leaf of an accepted batch root with its Merkle proof.
    function mintWithProof(bytes32 root, MintLeaf calldata leaf, bytes32[] calldata proof) external whenNotPaused {
        if (!acceptedRoot[root]) revert UnknownRoot(root);
        if (consumed[leaf.eventId]) revert AlreadyConsumed(leaf.eventId);
        _mintLeaf(root, leaf, proof);
    }

    function _acceptBatch(bytes32 root, uint256 rx, uint256 ry, uint256 z) private {
        if (acceptedRoot[root]) return;
        uint256 px = _px;
        if (px == 0) revert KeyNotSet();
        if (!FROST.verify(_batchMessage(root), px, _py, rx, ry, z)) revert InvalidSignature();
        acceptedRoot[root] = true;
        emit BatchAccepted(root);
    }

    /// @dev The caller checked that the event id is unconsumed and the root accepted.
    function _mintLeaf(bytes32 root, MintLeaf calldata leaf, bytes32[] calldata proof) private {
        if (leaf.recipient == address(0)) revert InvalidRecipient();
        if (leaf.amountSats == 0) revert InvalidAmount();
        bytes32 node = _leaf(leaf.eventId, leaf.recipient, leaf.amountSats);
        for (uint256 j = 0; j < proof.length; j++) {
            node = _hashPair(node, proof[j]);
        }
        if (node != root) revert InvalidProof(leaf.eventId);
        consumed[leaf.eventId] = true;
        token.bridgeMint(leaf.recipient, leaf.amountSats);
        emit Minted(leaf.eventId, leaf.recipient, leaf.amountSats);
    }

    // ---------------------------------------------------------------- burn

    /// @notice Burns `amountSats` of the caller's wrapped BTC (no approval needed) and
    /// requests their release to the Bitcoin output script `btcScriptPubKey`, which must
    /// be a standard P2PKH, P2SH, P2WPKH, P2WSH or P2TR script; at least
    /// `minBurnToBitcoin(btcScriptPubKey)`. The user receives `amountSats - pegOutFee`.
    /// @return nonce The burn nonce that identifies this request.
    function burnToBitcoin(uint64 amountSats, bytes calldata btcScriptPubKey)
        external
        whenNotPaused
        returns (uint64 nonce)
    {
        if (amountSats == 0) revert InvalidAmount();
        uint64 minimum = minBurnToBitcoin(btcScriptPubKey);
        if (amountSats < minimum) revert AmountBelowMinimum(minimum);
        nonce = _burn(amountSats);
        emit BurnToBitcoin(nonce, msg.sender, amountSats, btcScriptPubKey);
    }

    /// @notice Burns `amountSats` of the caller's wrapped BTC (no approval needed) and
    /// requests a mint of the same amount to `recipient` on chain `destChainId`.
    /// @return nonce The burn nonce that identifies this request.
    function burnToChain(uint64 destChainId, address recipient, uint64 amountSats)
        external
        whenNotPaused
        returns (uint64 nonce)
    {
        if (amountSats == 0) revert InvalidAmount();
        if (destChainId == 0 || destChainId == block.chainid) revert InvalidChain();
        if (!knownChain[destChainId]) revert UnknownChain(destChainId);
        if (recipient == address(0)) revert InvalidRecipient();
        nonce = _burn(amountSats);
        emit BurnToChain(nonce, msg.sender, destChainId, recipient, amountSats);
    }

    /// @notice The smallest `burnToBitcoin` amount towards `btcScriptPubKey`: the
    /// peg-out fee plus the dust limit of its output type. Reverts `InvalidScript` if
    /// the script is not one of the five standard templates.
    function minBurnToBitcoin(bytes calldata btcScriptPubKey) public view returns (uint64) {
        uint64 dust = _dustLimit(btcScriptPubKey);
        if (dust == 0) revert InvalidScript();
        // pegOutFee <= MAX_SATS (constructor), so this cannot overflow.
        return pegOutFee + dust;
    }

    /// @dev Bitcoin Core's GetDustThreshold at the default -dustrelayfee (3 sat/vB) for
    /// the standard templates, matched by exact length and opcodes; 0 for any other
    /// script. Dust = 3 * (output size + input size that spends it):
    ///   P2PKH  76 a9 14 <20> 88 ac  3 * (34 + 148)      = 546
    ///   P2SH   a9 14 <20> 87        3 * (32 + 148)      = 540
    ///   P2WPKH 00 14 <20>           3 * (31 + 67)       = 294
    ///   P2WSH  00 20 <32>           3 * (43 + 67)       = 330
    ///   P2TR   51 20 <32>           3 * (43 + 67)       = 330
    function _dustLimit(bytes calldata s) private pure returns (uint64) {
        uint256 len = s.length;
        if (len == 25) {
            if (s[0] == 0x76 && s[1] == 0xa9 && s[2] == 0x14 && s[23] == 0x88 && s[24] == 0xac) return 546;
        } else if (len == 23) {
            if (s[0] == 0xa9 && s[1] == 0x14 && s[22] == 0x87) return 540;
        } else if (len == 22) {
            if (s[0] == 0x00 && s[1] == 0x14) return 294;
        } else if (len == 34) {
            if ((s[0] == 0x00 || s[0] == 0x51) && s[1] == 0x20) return 330;
        }
        return 0;
    }

    function _burn(uint64 amountSats) private returns (uint64 nonce) {
        nonce = burnNonce;
        burnNonce = nonce + 1;
        token.bridgeBurn(msg.sender, amountSats);
    }

    // ---------------------------------------------------------------- guardian

    function pause() external onlyGuardian {
        paused = true;
        emit Paused(msg.sender);
    }

    function unpause() external onlyGuardian {
        paused = false;
        emit Unpaused(msg.sender);
    }

    // ---------------------------------------------------------------- messages

    /// @notice The 32-byte message the group key signs to mint.
    function mintMessage(bytes32 eventId, address recipient, uint64 amountSats) external view returns (bytes32) {
        return _mintMessage(eventId, recipient, amountSats);
    }

    /// @notice The 32-byte message the group key signs for a batch of mints with Merkle
    /// root `root`: keccak256(abi.encode(keccak256("BTCFI-MINT-BATCH-v1"), chainid, this, root)).
    function batchMessage(bytes32 root) external view returns (bytes32) {
        return _batchMessage(root);
    }

    /// @notice The leaf of one mint in a batch:
    /// keccak256(abi.encode(keccak256("BTCFI-MINT-LEAF-v1"), eventId, recipient, uint64 amountSats)).
    /// Inner nodes hash two words, the smaller first; a node without a sibling moves up.
    function mintLeaf(bytes32 eventId, address recipient, uint64 amountSats) external pure returns (bytes32) {
        return _leaf(eventId, recipient, amountSats);
    }

    /// @notice The 32-byte message the current group key signs to rotate to (newPx, newPy).
    function rotateMessage(uint256 newPx, uint256 newPy) external view returns (bytes32) {
        return _rotateMessage(rotationNonce, newPx, newPy);
    }

    /// @notice The 32-byte message the current group key signs to make `chainId` a
    /// known (`enabled`) or unknown destination chain, at the current `chainNonce`:
    /// keccak256(abi.encode(keccak256("BTCFI-CHAIN-v1"), chainid, this, chainNonce,
    /// uint64 chainId, bool enabled)).
    function knownChainMessage(uint64 chainId, bool enabled) external view returns (bytes32) {
        return _chainMessage(chainNonce, chainId, enabled);
    }

    /// @notice FROST(secp256k1, SHA-256) verification of (rx, ry, z) on `message` by
    /// (px, py); false on any malformed input.
    function verify(bytes32 message, uint256 px, uint256 py, uint256 rx, uint256 ry, uint256 z)
        external
        view
        returns (bool)
    {
        return FROST.verify(message, px, py, rx, ry, z);
    }

    function _mintMessage(bytes32 eventId, address recipient, uint64 amountSats) private view returns (bytes32) {
        return keccak256(abi.encode(MINT_TAG, block.chainid, address(this), eventId, recipient, amountSats));
    }

    function _batchMessage(bytes32 root) private view returns (bytes32) {
        return keccak256(abi.encode(BATCH_TAG, block.chainid, address(this), root));
    }

    function _leaf(bytes32 eventId, address recipient, uint64 amountSats) private pure returns (bytes32) {
        return keccak256(abi.encode(LEAF_TAG, eventId, recipient, amountSats));
    }

    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32) {
        return a <= b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    function _rotateMessage(uint64 nonce, uint256 newPx, uint256 newPy) private view returns (bytes32) {
        return keccak256(abi.encode(ROTATE_TAG, block.chainid, address(this), nonce, newPx, newPy));
    }

    function _chainMessage(uint64 nonce, uint64 chainId, bool enabled) private view returns (bytes32) {
        return keccak256(abi.encode(CHAIN_TAG, block.chainid, address(this), nonce, chainId, enabled));
    }
}
