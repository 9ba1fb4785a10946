"""Built-in matchers: the core's matchers, offered through the same hook a third-party matcher uses."""
from parity import hookimpl
from parity.core.matcher import AutoMatcher, ExactMatcher


@hookimpl
def register_matchers(register):
    register(ExactMatcher())
    register(AutoMatcher())
