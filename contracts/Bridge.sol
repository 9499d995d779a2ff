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
/// id and this contract's address, plus a consumed event id (mint) or the rotation
/// nonce (rotation), so no signature is valid twice or anywhere else.
///
/// Roles: the deployer sets the first group key (once); afterwards only the current
/// group key can replace itself. The guardian can pause minting and burning (not key
/// rotation: rotating away from a compromised key must stay possible while paused).
contract Bridge {
    bytes32 private constant MINT_TAG = keccak256("BTCFI-MINT-v1");
    bytes32 private constant ROTATE_TAG = keccak256("BTCFI-ROTATE-v1");
    /// @notice Longest accepted Bitcoin output script (Bitcoin's own script size limit).
    uint256 public constant MAX_SCRIPT_LEN = 10_000;

    WrappedBTC public immutable token;
    address public immutable guardian;
    address public immutable deployer;

    /// @dev Packed in one slot: the three change together on the hot paths.
    bool public paused;
    /// @notice Nonce of the next burn (one counter for both burn kinds, starting at 0).
    uint64 public burnNonce;
    /// @notice Nonce that the next key rotation message must carry.
    uint64 public rotationNonce;

    uint256 private _px;
    uint256 private _py;

    /// @notice Event ids that already minted.
    mapping(bytes32 eventId => bool) public consumed;

    event Minted(bytes32 indexed eventId, address indexed recipient, uint64 amountSats);
    event BurnToBitcoin(uint64 indexed nonce, address indexed from, uint64 amountSats, bytes btcScriptPubKey);
    event BurnToChain(
        uint64 indexed nonce, address indexed from, uint64 destChainId, address recipient, uint64 amountSats
    );
    /// @notice The group key changed to (px, py); `rotationNonce` is the nonce the
    /// authorising message carried (the contract's `rotationNonce()` is now one more).
    event KeyRotated(uint256 px, uint256 py, uint64 rotationNonce);
    event Paused(address guardian);
    event Unpaused(address guardian);

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

    modifier whenNotPaused() {
        if (paused) revert BridgePaused();
        _;
    }

    modifier onlyGuardian() {
        if (msg.sender != guardian) revert NotGuardian();
        _;
    }

    constructor(address guardian_) {
        guardian = guardian_;
        deployer = msg.sender;
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
    /// `rotateMessage(newPx, newPy)`.
    function rotateKey(uint256 newPx, uint256 newPy, uint256 rx, uint256 ry, uint256 z) external {
        uint256 px = _px;
        if (px == 0) revert KeyNotSet();
        if (!FROST.isValidPublicKey(newPx, newPy)) revert InvalidKey();
        uint64 nonce = rotationNonce;
        if (!FROST.verify(_rotateMessage(nonce, newPx, newPy), px, _py, rx, ry, z)) revert InvalidSignature();
        _px = newPx;
        _py = newPy;
        rotationNonce = nonce + 1;
        emit KeyRotated(newPx, newPy, nonce);
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

    // ---------------------------------------------------------------- burn

    /// @notice Burns `amountSats` of the caller's wrapped BTC (no approval needed) and
    /// requests their release to the Bitcoin output script `btcScriptPubKey`.
    /// @return nonce The burn nonce that identifies this request.
    function burnToBitcoin(uint64 amountSats, bytes calldata btcScriptPubKey)
        external
        whenNotPaused
        returns (uint64 nonce)
    {
        if (amountSats == 0) revert InvalidAmount();
        if (btcScriptPubKey.length == 0 || btcScriptPubKey.length > MAX_SCRIPT_LEN) revert InvalidScript();
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
        if (recipient == address(0)) revert InvalidRecipient();
        nonce = _burn(amountSats);
        emit BurnToChain(nonce, msg.sender, destChainId, recipient, amountSats);
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

    /// @notice The 32-byte message the current group key signs to rotate to (newPx, newPy).
    function rotateMessage(uint256 newPx, uint256 newPy) external view returns (bytes32) {
        return _rotateMessage(rotationNonce, newPx, newPy);
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

    function _rotateMessage(uint64 nonce, uint256 newPx, uint256 newPy) private view returns (bytes32) {
        return keccak256(abi.encode(ROTATE_TAG, block.chainid, address(this), nonce, newPx, newPy));
    }
}
