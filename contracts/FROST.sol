// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title FROST(secp256k1, SHA-256) signature verification
/// @notice Verifies RFC 9591 FROST(secp256k1, SHA-256) Schnorr signatures, the form
/// produced by the `frost-secp256k1` crate: a group commitment point `R` and a scalar
/// `z` such that `z*G == R + c*P`, where
///     c = H2(enc(R) || enc(P) || message)
///     H2(m) = OS2IP(expand_message_xmd_SHA256(m, "FROST-secp256k1-SHA256-v1chal", 48)) mod n
/// and `enc` is the 33-byte SEC1 compressed encoding of a point.
/// @dev Costs about 5k gas: the three SHA-256 blocks of expand_message_xmd go through
/// the SHA-256 precompile (0x02) and the two scalar multiplications through one
/// `ecrecover` (0x01): ecrecover(h, v, r, s) returns the address of
/// r^-1 * (s*Q - h*G), where Q is the point with x = r and y parity v - 27. With
/// Q = P, r = px, s = c*px and h = z*px that is the address of c*P - z*G, which must
/// equal the address of -R. Comparing addresses (160 bits of keccak) instead of points
/// is what the trick costs; forging a match is a 2^160 preimage search.
///
/// The trick needs 0 < px < n (ecrecover's range for r), so a public key with
/// px >= n is refused by `isValidPublicKey` (about 2^-128 of all keys: a DKG that
/// produces one must be run again).
library FROST {
    /// The secp256k1 base field prime.
    uint256 internal constant P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f;
    /// The secp256k1 group order.
    uint256 internal constant N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;

    // expand_message_xmd(msg, DST, 48) with DST = "FROST-secp256k1-SHA256-v1chal" (29 bytes):
    //   msg'  = Z_pad(64 zero bytes) || msg || I2OSP(48, 2) || I2OSP(0, 1) || DST || I2OSP(29, 1)
    //   b0    = SHA256(msg')
    //   b1    = SHA256(b0 || 0x01 || DST || I2OSP(29, 1))
    //   b2    = SHA256((b0 xor b1) || 0x02 || DST || I2OSP(29, 1))
    //   bytes = b1 || b2[0..16]
    /// `I2OSP(48, 2) || 0x00 || DST`: exactly one word, the tail of msg' before its last byte.
    bytes32 private constant XMD_TAIL = 0x00300046524f53542d736563703235366b312d5348413235362d76316368616c;
    /// `0x01 || DST || I2OSP(29, 1)` followed by one byte of padding (not hashed).
    bytes32 private constant XMD_B1_SUFFIX = 0x0146524f53542d736563703235366b312d5348413235362d76316368616c1d00;
    /// `I2OSP(29, 1)`: the length byte that ends DST_prime.
    uint256 private constant DST_LEN = 29;

    /// @notice Whether (x, y) is an affine point of secp256k1 with both coordinates
    /// reduced (< p). The point at infinity has no affine form, so it is never accepted.
    function isOnCurve(uint256 x, uint256 y) internal pure returns (bool ok) {
        assembly ("memory-safe") {
            ok := and(
                and(lt(x, P), lt(y, P)),
                eq(mulmod(y, y, P), addmod(mulmod(x, mulmod(x, x, P), P), 7, P))
            )
        }
    }

    /// @notice Whether (x, y) can be a group key: on the curve and 0 < x < n (the
    /// ecrecover range; x = 0 is never on the curve since 7 is not a square mod p).
    function isValidPublicKey(uint256 x, uint256 y) internal pure returns (bool) {
        return x < N && isOnCurve(x, y);
    }

    /// @notice The FROST challenge c = H2(enc(R) || enc(P) || message).
    /// @dev Callers must pass reduced coordinates (< p); `verify` checks them first.
    function challenge(uint256 rx, uint256 ry, uint256 px, uint256 py, bytes32 message)
        internal
        view
        returns (uint256 c)
    {
        assembly ("memory-safe") {
            // Scratch memory past the free memory pointer; nothing is allocated.
            let m := mload(0x40)
            // msg' (195 bytes), written left to right: each mstore may spill zeros or
            // garbage past its field, which the next write overwrites.
            mstore(m, 0)
            mstore(add(m, 0x20), 0)
            mstore8(add(m, 0x40), or(2, and(ry, 1)))
            mstore(add(m, 0x41), rx)
            mstore8(add(m, 0x61), or(2, and(py, 1)))
            mstore(add(m, 0x62), px)
            mstore(add(m, 0x82), message)
            mstore(add(m, 0xa2), XMD_TAIL)
            mstore8(add(m, 0xc2), DST_LEN)
            // b0 goes to m + 0xe0, followed by the b1 suffix: b0 || 0x01 || DST_prime.
            let b := add(m, 0xe0)
            let ok := staticcall(gas(), 0x02, m, 0xc3, b, 0x20)
            let b0 := mload(b)
            mstore(add(b, 0x20), XMD_B1_SUFFIX)
            ok := and(ok, staticcall(gas(), 0x02, b, 0x3f, b, 0x20))
            let b1 := mload(b)
            // (b0 xor b1) || 0x02 || DST_prime
            mstore(b, xor(b0, b1))
            mstore8(add(b, 0x20), 2)
            ok := and(ok, staticcall(gas(), 0x02, b, 0x3f, b, 0x20))
            if iszero(ok) { revert(0, 0) }
            let b2 := mload(b)
            // OS2IP(b1 || b2[0..16]) mod n = (b1 * 2^128 + (b2 >> 128)) mod n
            c := addmod(mulmod(b1, shl(128, 1), N), shr(128, b2), N)
        }
    }

    /// @notice Verifies a FROST(secp256k1, SHA-256) signature (R, z) on `message` by the
    /// key (px, py). Returns false (never reverts) on any malformed input: a key that
    /// fails `isValidPublicKey`, an R that is not an affine curve point with reduced
    /// coordinates, or z outside [1, n).
    function verify(bytes32 message, uint256 px, uint256 py, uint256 rx, uint256 ry, uint256 z)
        internal
        view
        returns (bool valid)
    {
        if (!isValidPublicKey(px, py) || !isOnCurve(rx, ry) || z == 0 || z >= N) {
            return false;
        }
        uint256 c = challenge(rx, ry, px, py, message);
        assembly ("memory-safe") {
            // address(-R): keccak256 of the uncompressed coordinates, low 20 bytes.
            // ry != 0 (secp256k1 has no point of order 2), so P - ry is reduced.
            mstore(0x00, rx)
            mstore(0x20, sub(P, ry))
            let expected := and(keccak256(0x00, 0x40), 0xffffffffffffffffffffffffffffffffffffffff)

            // ecrecover(h = z*px, v = 27 + parity(py), r = px, s = c*px) = address(c*P - z*G).
            // h != 0 since z, px are in [1, n); s == 0 (c == 0) makes ecrecover fail.
            let m := mload(0x40)
            mstore(m, mulmod(z, px, N))
            mstore(add(m, 0x20), add(27, and(py, 1)))
            mstore(add(m, 0x40), px)
            mstore(add(m, 0x60), mulmod(c, px, N))
            // ecrecover returns no data on failure (e.g. a result at infinity): clear the
            // output word so a failure reads as address 0, which never equals `expected`
            // unless keccak256 has a 160-bit zero prefix, hence the explicit check.
            mstore(0x00, 0)
            let ok := staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20)
            let recovered := mload(0x00)
            valid := and(and(ok, eq(returndatasize(), 0x20)), and(iszero(iszero(expected)), eq(recovered, expected)))
        }
    }
}
