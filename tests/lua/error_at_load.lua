-- Fails while the file itself runs.
error("cannot start")
