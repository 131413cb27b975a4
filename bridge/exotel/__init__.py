"""Exotel's Connect applet on an inbound number: ask the application whom to dial (JSON 1.1
parameters or the legacy "Dial whom" list of numbers), ring agents sequentially or in
parallel under state management, bridge the first who answers, then follow one of three
transitions. See docs/exotel-connect.md."""
