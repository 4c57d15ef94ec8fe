"""Data preparation shared by the command-line tools: fairseq-free, so that the tools start fast."""
