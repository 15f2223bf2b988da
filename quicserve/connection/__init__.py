"""One connection, whatever its transport: the shared driver and its byte-stream and QUIC kinds."""
