from services.hitl.service import HitlService

HitlService.main()
