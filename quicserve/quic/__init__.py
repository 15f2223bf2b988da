"""Sans-IO QUIC pieces: datagram classification, CIDs, Retry and reset tokens, the aioquic
compat layer and the QPACK guard it bounds field sections with."""
