"""Southbound adapters: meters, actuators and dispensers behind the small interface in `ports`."""
