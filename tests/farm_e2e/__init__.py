"""End-to-end journeys: a client's cart moves between two real sites behind the dispatcher."""
