from .version_check import check_openmmlab_versions, check_version

__all__ = ['check_openmmlab_versions', 'check_version']
