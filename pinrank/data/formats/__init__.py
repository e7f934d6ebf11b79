"""Readers of public interaction-log formats (../shared/data): each turns a
source's raw files into a RawLog plus per-item side information, counting or
raising on bad rows. pinrank.data.importers picks the reader and assembles
the Dataset."""
