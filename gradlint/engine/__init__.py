"""The signal-propagation engine: one forward and one backward sweep over the graph with a
registry of per-op transfer rules, the Gaussian and recurrent numerics behind them, and the
summary that turns per-node statistics into a verdict. Imports torch."""
