"""The daily batch job: PinnerFormer checkpoint -> user-embedding snapshot
(`batch`), optionally split across processes (`shards`)."""
