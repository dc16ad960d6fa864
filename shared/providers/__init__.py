"""Provider adapters: one pooled HTTP client per provider, mapping Switchboard's request to
each provider API and back. Used by the gateway, the only service that calls providers."""

from shared.providers.base import Completion, ProviderAdapter, ProviderCallError
from shared.providers.pool import ProviderPool

__all__ = ["Completion", "ProviderAdapter", "ProviderCallError", "ProviderPool"]
