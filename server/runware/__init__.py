"""The Runware API (current task arrays and the legacy picfinder protocol), WebSocket and REST."""
