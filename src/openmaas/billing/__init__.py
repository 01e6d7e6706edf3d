"""Money and limits around each request: admission (rate limits, holds), settlement,
crash recovery, and the administration of prices, tiers, balances and budgets."""
