"""The paper-trading pod runtime."""
