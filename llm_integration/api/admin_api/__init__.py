"""The staff API: serializers and viewsets over the configuration rows (CONTRACT §9)."""
