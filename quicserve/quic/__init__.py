"""Sans-IO QUIC endpoint pieces: datagram classification, CIDs, Retry and reset tokens."""
