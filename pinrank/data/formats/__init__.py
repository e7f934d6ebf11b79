"""Readers of public interaction-log formats (../shared/data): each turns a
source's raw files into a RawLog (rawlog) plus per-item side information,
counting or raising on bad rows. The large CSV files are read column by
column (columnar), each file falling back to the format's reference row
reader (rows) where it holds anything but clean rows. pinrank.data.importers
picks the reader and assembles the Dataset."""
