from services.ingress.service import IngressService

IngressService.main()
