"""Study configuration: pydantic models and safe YAML loading."""
from joulebench.config.loader import LoadedStudy, load_study, parse_study_text  # noqa: F401
from joulebench.config.study import COMMON_KEYS, WORKLOAD_KEYS, StudyConfig  # noqa: F401
