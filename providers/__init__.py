"""Provider adapters: one module per wire protocol; `base` holds the contract."""
