"""Pure decoders: bytes in, frozen records or ParseError out. Nothing here opens a file."""
