"""From a judge's answer to a scored event: a score, or an explicit reason there is none."""

from services.parser.scoring import DEFAULT_MAX_SCORE, DEFAULT_PARSER, parse_score
from shared.events import EvaluationDone, EvaluationScored


def score_evaluation(done: EvaluationDone) -> EvaluationScored:
    parser = done.task.parser or DEFAULT_PARSER
    result = parse_score(done.call.text, parser=parser, max_score=done.task.max_score or DEFAULT_MAX_SCORE,
                         allow_decimals=done.task.allow_decimals)
    return EvaluationScored(
        task=done.task,
        parser=parser,
        score=result.score,
        parse_error=result.error,
        candidates=list(result.candidates),
        lines_examined=list(result.lines_examined),
    )
