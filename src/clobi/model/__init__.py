"""Pure core: specs, records, states and the transition table. No I/O here."""
