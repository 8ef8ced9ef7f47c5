"""Runware's legacy (picfinder era) WebSocket protocol: plain-object messages such as newTask."""
