"""Study configuration: pydantic models and safe YAML loading."""
from .loader import LoadedStudy, load_study, parse_study_text  # noqa: F401
from .study import COMMON_KEYS, WORKLOAD_KEYS, StudyConfig  # noqa: F401
