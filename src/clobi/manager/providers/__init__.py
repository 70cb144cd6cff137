"""Providers: one module per place machines come from, each implementing `base.Provider`."""
