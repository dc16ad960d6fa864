from services.router.service import RouterService

RouterService.main()
