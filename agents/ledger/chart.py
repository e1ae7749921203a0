"""The chart of accounts (会计科目表): the Chinese enterprise standard (企业会计准则) by default, every account
overridable per tenant by its role (``LedgerPolicy.accounts``), so a tenant maps our roles onto its own codes."""

from __future__ import annotations

from schemas.ledger import Account, AccountRole, LedgerPolicy

STANDARD: dict[AccountRole, Account] = {
    AccountRole.BANK: Account(code="1002", name="银行存款"),
    AccountRole.WALLET: Account(code="1012", name="其他货币资金—平台账户"),
    AccountRole.RECEIVABLE: Account(code="1122", name="应收账款"),
    AccountRole.INVENTORY: Account(code="1405", name="库存商品"),
    AccountRole.GOODS_SHIPPED: Account(code="1406", name="发出商品"),
    AccountRole.PENDING_LOSS: Account(code="1901", name="待处理财产损溢—待处理流动资产损溢"),
    AccountRole.PAYABLE: Account(code="2202", name="应付账款"),
    AccountRole.INPUT_VAT: Account(code="2221.01", name="应交税费—应交增值税（进项税额）"),
    AccountRole.OUTPUT_VAT: Account(code="2221.02", name="应交税费—应交增值税（销项税额）"),
    AccountRole.REVENUE: Account(code="6001", name="主营业务收入"),
    AccountRole.COST: Account(code="6401", name="主营业务成本"),
    AccountRole.COMMISSION: Account(code="6601.01", name="销售费用—平台佣金"),
    AccountRole.FREIGHT: Account(code="6601.02", name="销售费用—运杂费"),
    AccountRole.ADMIN_EXPENSE: Account(code="6602", name="管理费用"),
}


def account(policy: LedgerPolicy, role: AccountRole) -> Account:
    """The tenant's account for ``role``: its own when its policy maps one, else the standard one."""
    return policy.accounts.get(role) or STANDARD[role]


def chart(policy: LedgerPolicy) -> dict[AccountRole, Account]:
    return {role: account(policy, role) for role in AccountRole}
