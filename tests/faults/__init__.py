"""The fault suite: Switchboard as processes under load while its parts fail (`make faults`)."""
