class SlotLeases:  # stand-in
    pass
