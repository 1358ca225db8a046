"""Approving configuration changes: how sensitive a change is, who may execute it.

- `classifier`: rules that rate a configuration as low, medium or high.
- `tokens`: signed, single-use execution tokens that bind an approval to
  one device and one exact configuration.
- `executor`: the plug-in that applies an approved configuration.
"""

from pdsno.approval.classifier import Classification, RuleClassifier, Sensitivity

__all__ = ["Classification", "RuleClassifier", "Sensitivity"]
