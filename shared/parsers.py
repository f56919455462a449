"""The score parsers a template may name: input validation accepts exactly these names and the
parser service implements exactly these (a test holds the two together)."""

KNOWN_PARSERS = ("in_last_line", "final_verdict")
DEFAULT_PARSER = "final_verdict"
