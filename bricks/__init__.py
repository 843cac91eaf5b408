"""bricks: layer 2 sparse ABI bricks, the portable exact domain decoder and paste."""
