// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title Wrapped BTC (btcfi)
/// @notice A standard ERC-20 with 8 decimals: one unit is one satoshi held by the
/// bridge's Bitcoin vault. Only its bridge mints (on a FROST-signed deposit) and burns
/// (on a peg-out request by the holder, which needs no allowance because the bridge
/// burns only from `msg.sender` of its own burn functions).
/// @dev Errors follow ERC-6093 so wallets and explorers decode them.
contract WrappedBTC {
    string public constant name = "Wrapped BTC (btcfi)";
    string public constant symbol = "btcfiBTC";
    uint8 public constant decimals = 8;

    /// @notice The only address allowed to mint and burn.
    address public immutable bridge;

    uint256 public totalSupply;
    mapping(address account => uint256) public balanceOf;
    mapping(address owner => mapping(address spender => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error NotBridge();
    error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed);
    error ERC20InvalidSender(address sender);
    error ERC20InvalidReceiver(address receiver);
    error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
    error ERC20InvalidApprover(address approver);
    error ERC20InvalidSpender(address spender);

    modifier onlyBridge() {
        if (msg.sender != bridge) revert NotBridge();
        _;
    }

    constructor(address bridge_) {
        bridge = bridge_;
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        if (spender == address(0)) revert ERC20InvalidSpender(address(0));
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    /// @dev An allowance of `type(uint256).max` is never decreased (infinite approval).
    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 current = allowance[from][msg.sender];
        if (current != type(uint256).max) {
            if (current < value) revert ERC20InsufficientAllowance(msg.sender, current, value);
            unchecked {
                allowance[from][msg.sender] = current - value;
            }
        }
        _transfer(from, to, value);
        return true;
    }

    /// @notice Mints `value` to `to`. Bridge only.
    function bridgeMint(address to, uint256 value) external onlyBridge {
        if (to == address(0)) revert ERC20InvalidReceiver(address(0));
        // Checked: the supply can never wrap.
        totalSupply += value;
        unchecked {
            // Cannot overflow: a balance is at most totalSupply.
            balanceOf[to] += value;
        }
        emit Transfer(address(0), to, value);
    }

    /// @notice Burns `value` from `from`, without allowance. Bridge only; the bridge
    /// passes its own caller as `from`.
    function bridgeBurn(address from, uint256 value) external onlyBridge {
        if (from == address(0)) revert ERC20InvalidSender(address(0));
        uint256 balance = balanceOf[from];
        if (balance < value) revert ERC20InsufficientBalance(from, balance, value);
        unchecked {
            balanceOf[from] = balance - value;
            totalSupply -= value;
        }
        emit Transfer(from, address(0), value);
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) revert ERC20InvalidReceiver(address(0));
        uint256 balance = balanceOf[from];
        if (balance < value) revert ERC20InsufficientBalance(from, balance, value);
        unchecked {
            balanceOf[from] = balance - value;
            balanceOf[to] += value;
        }
        emit Transfer(from, to, value);
    }
}
